"""Where the trainer's minibatches come from: the whole cache in RAM when it fits the budget, else
rows read from the cache file for each batch, so the process's resident memory stays near the
budget however large the cache is.

Either way a minibatch is the rows of a global random permutation (never corpus order), so both
sources give the same batches and a resumed run can redraw them.
"""
import mmap
import os

import numpy as np
import torch


class ActivationSource:
    def __init__(self, activations, n_rows: int, *, ram_budget_bytes: int | None, device: str):
        self.device = device
        self.pin = device.startswith("cuda")
        self.in_ram = None
        if isinstance(activations, torch.Tensor):
            self.in_ram = activations[:n_rows]
        else:
            row_bytes = activations.dtype.itemsize * activations.shape[1]
            fits = ram_budget_bytes is None or n_rows * row_bytes <= ram_budget_bytes
            offset = _file_offset(activations)
            if fits or offset is None:
                self.in_ram = torch.from_numpy(np.array(activations[:n_rows]))  # a writable copy in RAM
                if self.pin:
                    self.in_ram = self.in_ram.pin_memory()
            else:
                # Reading through the mapping would map the kernel's whole fault-around window
                # (and all cached neighbours) into our resident set; pread copies only the rows.
                self.fd = os.open(activations.filename, os.O_RDONLY)
                self.offset = offset
                self.row_bytes = row_bytes
                self.dtype = activations.dtype
                self.d_model = activations.shape[1]
        self.mode = "ram" if self.in_ram is not None else "stream"

    def read(self, indices: torch.Tensor) -> torch.Tensor:
        if self.in_ram is not None:
            rows = self.in_ram[indices.to(self.in_ram.device)]
            if self.pin and rows.device.type == "cpu":
                rows = rows.pin_memory()
        else:
            rows = torch.from_numpy(self._pread(np.sort(indices.numpy())))
            if self.pin:
                rows = rows.pin_memory()
        return rows.to(self.device, torch.float32, non_blocking=self.pin)

    def _pread(self, picked: np.ndarray) -> np.ndarray:
        return _pread_rows(self.fd, self.offset, self.row_bytes, self.dtype, self.d_model, picked)

    def close(self) -> None:
        if self.in_ram is None:
            os.close(self.fd)


def _file_offset(activations) -> int | None:
    """Where the first row of a memmap (or of a contiguous slice of rows of one) lies in its file;
    None for anything else. A slice keeps its parent's `offset` attribute, which is not its own."""
    if not isinstance(activations, np.memmap) or activations.ndim != 2 or not activations.flags.c_contiguous:
        return None
    root = activations
    while isinstance(root.base, np.memmap):
        root = root.base
    if not isinstance(root.base, mmap.mmap):
        return None
    return root.offset + (activations.ctypes.data - root.ctypes.data)


def _pread_rows(fd, offset, row_bytes, dtype, d_model, picked: np.ndarray) -> np.ndarray:
    out = np.empty((len(picked), d_model), dtype=dtype)
    view = memoryview(out).cast("B")
    # Sorted rows are read front to back; adjacent ones in one call.
    start = 0
    while start < len(picked):
        end = start + 1
        while end < len(picked) and picked[end] == picked[end - 1] + 1:
            end += 1
        os.preadv(fd, [view[start * row_bytes : end * row_bytes]], offset + int(picked[start]) * row_bytes)
        start = end
    return out


def float_tensor(rows, device: str) -> torch.Tensor:
    """Rows (an array, a slice of a memmap, or a tensor) as a float32 tensor on `device`. A view
    torch may not write (a read-only memmap's slice) is copied first: torch.from_numpy over it
    warns "The given NumPy array is not writable"."""
    if isinstance(rows, torch.Tensor):
        return rows.to(device, torch.float32)
    return torch.from_numpy(np.require(rows, dtype=np.float32, requirements=["C", "W"])).to(device)


def read_rows(activations, indices: np.ndarray) -> np.ndarray:
    """Rows of an array or a memmap; from a memmap by pread, which maps nothing into this process."""
    offset = _file_offset(activations)
    if offset is None:
        return np.asarray(activations[indices])
    fd = os.open(activations.filename, os.O_RDONLY)
    try:
        row_bytes = activations.dtype.itemsize * activations.shape[1]
        return _pread_rows(fd, offset, row_bytes, activations.dtype, activations.shape[1], indices)
    finally:
        os.close(fd)


def rows_tensor(activations, indices, device: str, *, mapped: bool = False) -> torch.Tensor:
    """Rows `indices` (numpy or torch) of a tensor, an array or a memmap, as float32 on `device`.
    From an array the rows come in sorted order, which turns a memmap gather into one forward sweep
    over the file (the order of rows inside a minibatch does not matter to the loss); `mapped`
    reads through the array's own mapping, not by its file name (a file still being written is
    renamed when it is finished)."""
    if isinstance(activations, torch.Tensor):
        return activations[torch.as_tensor(indices).to(activations.device)].to(device, torch.float32)
    picked = np.sort(indices.numpy() if isinstance(indices, torch.Tensor) else np.asarray(indices))
    return float_tensor(activations[picked] if mapped else read_rows(activations, picked), device)

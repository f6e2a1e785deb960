"""How a job's corpus becomes rows and what its run will write to disk, known at submission: the
packing and cache mode it asks for (checked), the packing its corpus's format gets when it asks
for none, and the disk plan (engine.disk) from an estimate of the tokens one pass over the corpus
gives. The model's tokenizer is read for that estimate in a limited child process, never its
weights; the web process creates no CUDA context; the engine is imported inside functions.

A hub model's weights are part of the plan: the files from_pretrained will download at the job's
commit, their sizes asked of the hub first (engine.models.hub_files), are refused past
MISTUDIO_MODEL_MAX_BYTES and counted in the disk (download_bytes) and in the owner's storage while
the job is queued. Once downloaded they sit in the hub cache, shared by every user's jobs on that
model: no one user's storage counts them then."""
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from engine import disk
from engine.text.packing import PACKINGS
from mistudio.errors import ServiceError
from training.models import Sweep, TrainingJob

# The corpus text the tokenizer measures bytes per token on: its first documents, this much at most.
SAMPLE_BYTES = 256 * 1024
GB = 1024**3  # as the memory check next to the disk check counts


def check_choices(*, packing: str | None, cache_activations: str, training_tokens: int | None) -> None:
    """The names engine.text.packing and engine.disk know, and a budget of at least one token (the API's
    serializer says the same; the CLI and direct callers come through here)."""
    if packing is not None and packing not in PACKINGS:
        raise ServiceError(f"packing {packing!r} is not a packing: choose one of {', '.join(PACKINGS)}.", field="packing")
    if cache_activations not in disk.CACHE_MODES:
        raise ServiceError(f"cache_activations {cache_activations!r} is not a cache mode: choose one of "
                           f"{', '.join(disk.CACHE_MODES)}.", field="cache_activations")
    if training_tokens is not None and training_tokens < 1:
        raise ServiceError(f"training_tokens {training_tokens}: a budget is at least 1 token; leave it null to "
                           "train max_epochs passes.", field="training_tokens")


@dataclass
class CorpusFacts:
    path: Path
    format: str  # "txt", "jsonl", "parquet", ...
    text_field: str  # the column holding the text, for the dataset formats
    default_packing: str  # what a job asking for no packing gets
    text_bytes: int  # UTF-8 bytes of text in all
    documents: int
    lines: int  # non-empty lines

    def sample(self, max_bytes: int = SAMPLE_BYTES) -> list[str]:
        """The corpus's first documents, about max_bytes of text, read without reading it all."""
        if self.format == "txt":
            with open(self.path, "rb") as handle:
                head = handle.read(max_bytes + 1)
            cut, head = len(head) > max_bytes, head[:max_bytes]
            lines = head.decode("utf-8", errors="ignore").splitlines()
            if cut and len(lines) > 1:
                lines = lines[:-1]  # cut mid-line (a single line longer than the sample is kept as cut)
            return [line.strip() for line in lines if line.strip()]
        from engine.text.corpus import iter_documents

        texts, size = [], 0
        for text in iter_documents(self.path, text_field=self.text_field):
            texts.append(text)
            size += len(text.encode("utf-8"))
            if size >= max_bytes:
                break
        return texts


def corpus_facts(corpus) -> CorpusFacts:
    """What a job needs to know of a corpus row: its format, text column, default packing, size."""
    from engine.text.corpus import default_packing

    return CorpusFacts(
        path=Path(corpus.path), format=corpus.format, text_field=corpus.text_field,
        default_packing=default_packing(corpus.format), text_bytes=corpus.text_bytes,
        documents=corpus.documents_count, lines=corpus.lines_count,
    )


def model_download(described, token: str | None = None):
    """The weights a hub model's run will download (engine.models.hub_files.WeightFiles), or None for a
    model that is not on the hub; a ServiceError naming the files and MISTUDIO_MODEL_MAX_BYTES when
    what is to download passes it, or when the hub does not say."""
    from engine.errors import EngineError
    from engine.models.hub_files import weight_files
    from training.hub import hub_token

    if described.resolved.source != "hub":
        return None
    try:
        files = weight_files(described.resolved, token=hub_token(token), timeout_s=settings.HUB_TIMEOUT_S,
                             read_index=_sandboxed_shard_names)
        files.check_limit(settings.MODEL_MAX_BYTES or None)
    except EngineError as err:
        raise ServiceError(str(err), field="model_name") from None
    return files


def _sandboxed_shard_names(index_path: str) -> list[str]:
    """engine.models.hub_files.shard_names in a limited child: the index is a stranger's JSON, up to
    16 MiB, whose parsed objects can take many times that (the worker's from_pretrained parses it
    anyway, so the worker reads it in its own process)."""
    from engine.errors import EngineError
    from mistudio.sandbox import SandboxError, SandboxRefused, run_limited

    try:
        return run_limited("engine.models.hub_files:shard_names", index_path, expected=("EngineError",),
                           what=f"the weight index {Path(index_path).name}")
    except (SandboxError, SandboxRefused) as err:
        raise EngineError(str(err)) from None


def download_disk(download_bytes: int) -> dict:
    """plan_disk's arguments for a download of `download_bytes` into the hub cache: on the data
    folder's disk it is counted with the run's files; on another disk, against that disk's free
    space less MISTUDIO_DISK_RESERVE_BYTES."""
    from engine.models.hub_files import hub_cache_dir

    if not download_bytes or disk.same_file_system(hub_cache_dir(), settings.DATA_DIR):
        return {"download_bytes": download_bytes, "download_free": None}
    free = max(0, disk.free_bytes(hub_cache_dir()) - settings.DISK_RESERVE_BYTES)
    return {"download_bytes": download_bytes, "download_free": free}


def planned_bytes(plan: dict | None) -> int:
    """What a plan writes on every disk: its needed_bytes, and its download where that goes to
    another disk (the owner's storage counts both)."""
    plan = plan or {}
    elsewhere = (plan.get("download_bytes") or 0) if plan.get("download_free_bytes") is not None else 0
    return (plan.get("needed_bytes") or 0) + elsewhere


def free_space() -> int:
    """What a job may write: the data folder's free space less what the jobs queued before it plan
    to write (each fits alone; together they must too), or MISTUDIO_DISK_BUDGET_BYTES when smaller
    (the worker's run applies the same budget to the free space it finds, engine.run.sources.free_space)."""
    free = max(0, disk.free_bytes(settings.DATA_DIR) - queued_plans_bytes(TrainingJob.objects.all()))
    return free if settings.DISK_BUDGET_BYTES is None else min(free, settings.DISK_BUDGET_BYTES)


def queued_plans_bytes(jobs, *, all_disks: bool = False) -> int:
    """What the queued jobs among `jobs` plan to write on the data folder's disk and have not begun
    to (no run started): a job's plan, a sweep's once for all its members (they share its caches).
    `all_disks`: their downloads to another disk too (planned_bytes)."""
    size = planned_bytes if all_disks else (lambda plan: (plan or {}).get("needed_bytes") or 0)
    total, sweeps = 0, set()
    queued = jobs.filter(status=TrainingJob.Status.QUEUED, attempts=0)
    for sweep_id, plan in queued.values_list("sweep_id", "disk_plan"):
        if sweep_id is None:
            total += size(plan)
        else:
            sweeps.add(sweep_id)
    for plan in Sweep.objects.filter(pk__in=sweeps).exclude(jobs__attempts__gt=0).values_list("disk_plan", flat=True):
        total += size(plan)
    return total


def job_packing(corpus, packing: str | None) -> str:
    """The packing a job records: the one asked for, else its corpus format's default."""
    return packing or corpus_facts(corpus).default_packing


def disk_plan(*, corpus, described, packing: str, max_sequence_length: int, hidden_dim: int, max_epochs: int,
              training_tokens: int | None, cache_activations: str, token: str | None = None, sites: int = 1) -> dict:
    """engine.disk's plan for the run (DiskPlan.to_dict(), with how its tokens were estimated:
    `bytes_per_token` and `tokens_estimated_from`); a ServiceError with DiskFull's message when
    the run cannot fit the data folder's free disk. `sites`: the caches the run writes side by side
    (paired sites, a transcoder's MLP input and output: 2)."""
    download = model_download(described, token)
    plan, estimate = _plan(corpus=corpus, described=described, packing=packing, max_sequence_length=max_sequence_length,
                           hidden_dim=hidden_dim, max_epochs=max_epochs, training_tokens=training_tokens,
                           cache_activations=cache_activations, token=token, sites=sites, download=download)
    if isinstance(plan, disk.DiskFull):
        raise ServiceError(str(plan))
    return {**plan.to_dict(), **estimate, **_download_fields(download), "reason": _reason(plan.reason, estimate)}


def _download_fields(download) -> dict:
    """The plan document's account of the model's weights: each file still to download and its
    size, and what the hub cache already holds (not counted)."""
    if download is None:
        return {"download_files": {}, "weights_cached_bytes": 0}
    return {"download_files": download.to_download, "weights_cached_bytes": download.total_bytes - download.download_bytes}


def sweep_disk_plans(*, corpus, described, packing: str, max_sequence_length: int, training_tokens: int | None,
                     sites: int, members: list[tuple[int, int]], token: str | None = None,
                     cache_activations: str = "auto") -> dict:
    """A sweep's disk: one cache per (layer, hook point) site, shared by its members, and every
    member's checkpoints (`members`: each one's hidden_dim and max_epochs); or, when it streams
    (cache_activations never, or auto and the caches would not fit), the checkpoints alone: the
    model then runs once per pass for all its members (engine.run.sweep). {"sweep": the total,
    with "streams", "members": each member's own plan}; a ServiceError saying how large and what
    to change when the whole sweep cannot fit."""
    cached, streamed, estimate = [], [], None
    download = model_download(described, token)  # once: the members load the same model
    for hidden_dim, max_epochs in members:
        sizes = dict(corpus=corpus, described=described, packing=packing, max_sequence_length=max_sequence_length,
                     hidden_dim=hidden_dim, max_epochs=max_epochs, training_tokens=training_tokens, token=token,
                     download=download)
        plan, estimate = _plan(**sizes, cache_activations="never", estimate=estimate)
        if isinstance(plan, disk.DiskFull):
            raise ServiceError(f"A member of the sweep alone cannot fit: {plan}")
        streamed.append(plan)
        plan, estimate = _plan(**sizes, cache_activations="always", estimate=estimate)
        cached.append(plan)  # or the DiskFull that says it cannot: a streaming sweep needs no cache
    cache_bytes = _unrefused(cached[0]).cache_bytes
    # The weights download once for the whole sweep (counted here when on the data folder's disk).
    weights = streamed[0].download_bytes if streamed[0].download_free_bytes is None else 0
    checkpoints = sum(plan.checkpoint_bytes for plan in streamed)
    free = streamed[0].free_bytes
    caches_fit = (weights + sites * cache_bytes + checkpoints <= free
                  and not any(isinstance(p, disk.DiskFull) for p in cached))
    streams = cache_activations == "never" or (cache_activations == "auto" and not caches_fit)
    refused = next((plan for plan in cached if isinstance(plan, disk.DiskFull)), None)
    if not streams and refused is not None:
        raise ServiceError(f"A member of the sweep alone cannot fit: {refused}")
    needed = weights + (checkpoints if streams else sites * cache_bytes + checkpoints)
    with_weights = f" and the model's weights to download, {_gb(weights):.3f} GB" if weights else ""
    if needed > free:
        if streams:
            raise ServiceError(
                f"The sweep needs {_gb(needed):.3f} GB of disk for its {len(streamed)} members' checkpoints (it streams: "
                f"no cache){with_weights} but {_gb(free):.3f} GB is free: give fewer members or a smaller hidden_dim, or more disk "
                "(MISTUDIO_DISK_BUDGET_BYTES).")
        raise ServiceError(
            f"The sweep needs {_gb(needed):.3f} GB of disk ({sites} site caches of {_gb(cache_bytes):.3f} GB and "
            f"{len(cached)} members' checkpoints, {_gb(checkpoints):.3f} GB{with_weights}) but {_gb(free):.3f} GB is free: set "
            "cache_activations to auto or never (the sweep then streams: one forward per batch feeds every member), "
            "give fewer layers or hook_points, a smaller training_tokens budget, or more disk (MISTUDIO_DISK_BUDGET_BYTES).")
    if cache_activations == "never":
        why = "cache_activations is never"
    elif streams:
        why = (f"its {sites} site caches ({_gb(sites * cache_bytes):.3f} GB) with the checkpoints would not fit the "
               f"{_gb(free):.3f} GB free")
    else:
        why = None
    total = {"sites": sites, "cache_bytes_per_site": 0 if streams else cache_bytes, "checkpoint_bytes": checkpoints,
             "needed_bytes": needed, "free_bytes": free, "rows_per_pass": streamed[0].rows_per_pass, "streams": streams,
             "download_bytes": streamed[0].download_bytes, "download_free_bytes": streamed[0].download_free_bytes,
             **_download_fields(download),
             "reason": _reason(f"the sweep streams: {why}; the model runs once per pass for all its members" if streams
                               else "one cache per site, read by its members", estimate), **estimate}
    if streams:
        member = f"a streaming sweep's member ({why}): it trains from the passes of the model shared with the others"
        return {"sweep": total, "members": [{**plan.to_dict(), **estimate, "reason": _reason(member, estimate)}
                                            for plan in streamed]}
    return {"sweep": total, "members": [{**plan.to_dict(), **estimate, "reason": _reason(
        f"a sweep member: it reads its site's cache, shared with {len(cached) // sites - 1} other members", estimate)}
        for plan in cached]}


def _unrefused(plan):
    """The DiskPlan, of a DiskFull too (what the run would have needed)."""
    return plan.plan if isinstance(plan, disk.DiskFull) else plan


def disk_report(*, corpus, described, **sizes) -> dict:
    """The check-memory document's disk_check: the plan in GB, or why there is none."""
    if corpus is None:
        return {"sufficient": None, "reason": "give corpus_file to estimate the disk a run needs"}
    try:
        download = model_download(described, sizes.get("token"))
    except ServiceError as err:
        return {"sufficient": False, "reason": err.message}
    plan, estimate = _plan(corpus=corpus, described=described, download=download, **sizes)
    full = isinstance(plan, disk.DiskFull)
    verdict = plan.plan if full else plan
    return {
        "cache": verdict.cache,
        "passes": verdict.passes,
        "estimated_tokens_per_pass": verdict.rows_per_pass,
        "cache_gb": _gb(verdict.cache_bytes),
        "checkpoints_gb": _gb(verdict.checkpoint_bytes),
        "download_gb": _gb(verdict.download_bytes),
        "needed_gb": _gb(verdict.needed_bytes),
        "free_gb": _gb(verdict.free_bytes),
        "sufficient": not full,
        "reason": _reason(str(plan) if full else plan.reason, estimate),
        "bytes_per_token": estimate["bytes_per_token"],
    }


def _plan(*, corpus, described, packing, max_sequence_length, hidden_dim, max_epochs, training_tokens,
          cache_activations, download, token=None, estimate=None, sites=1):
    """(the DiskPlan, or the DiskFull that refuses it; how the tokens were estimated). `estimate`:
    that of an earlier call on the same model and corpus (reading the tokenizer takes seconds).
    `download`: model_download's answer for the model."""
    from engine.trainer import TrainConfig

    facts = corpus_facts(corpus)
    if estimate is None:
        bytes_per_token, estimated_from = _bytes_per_token(described, facts, token)
    else:
        bytes_per_token, estimated_from = estimate["bytes_per_token"], estimate["tokens_estimated_from"]
    rows = disk.estimate_rows_per_pass(text_bytes=facts.text_bytes, bytes_per_token=bytes_per_token,
                                       documents=facts.documents, lines=facts.lines,
                                       packing=packing or facts.default_packing, max_sequence_length=max_sequence_length)
    sequences = disk.estimate_sequences_per_pass(rows_per_pass=rows, documents=facts.documents, lines=facts.lines,
                                                 packing=packing or facts.default_packing,
                                                 max_sequence_length=max_sequence_length)
    estimate = {"bytes_per_token": round(bytes_per_token, 3), "tokens_estimated_from": estimated_from}
    try:
        plan = disk.plan_disk(cache_activations=cache_activations, rows_per_pass=rows, d_model=described.info.hidden_size, sites=sites,
                              sequences=sequences,
                              d_sae=hidden_dim, max_epochs=max_epochs,
                              # The trainer holds this share out (train_config leaves it at its default).
                              eval_fraction=TrainConfig.__dataclass_fields__["eval_fraction"].default,
                              training_tokens=training_tokens, free=free_space(),
                              **download_disk(download.download_bytes if download is not None else 0))
    except disk.DiskFull as full:
        return full, estimate
    return plan, estimate


def _bytes_per_token(described, facts: CorpusFacts, token) -> tuple[float, str]:
    """Bytes per token of the corpus's first documents under the model's tokenizer, and what the
    number came from; 1 byte per token (about an upper bound on the tokens: a token is rarely
    less than a byte) where the tokenizer cannot be read cheaply."""
    try:
        texts = facts.sample()
    except Exception as err:  # noqa: BLE001 - a file gone or unreadable: the run will say so; this is an estimate
        return 1.0, f"1 byte per token (an upper bound): the corpus could not be read ({type(err).__name__})"
    try:
        measured = _measured_bytes_per_token(described.resolved, token, texts)
    except Exception as err:  # noqa: BLE001 - transformers raises many types for a tokenizer it cannot read
        # The child's error by its own name (mistudio.sandbox.SandboxError.kind), or the refusal's.
        kind = getattr(err, "kind", None) or type(err).__name__
        return 1.0, f"1 byte per token (an upper bound): the tokenizer could not be read ({kind})"
    if measured is None:
        return 1.0, "1 byte per token (an upper bound): the corpus's first documents gave no tokens"
    size = sum(len(text.encode("utf-8")) for text in texts)
    return measured, (f"{measured:.2f} bytes per token, measured with the model's tokenizer on the corpus's first "
                      f"{len(texts):,} documents ({size / 1024:.0f} KiB)")


def _measured_bytes_per_token(resolved, token, texts: list[str]) -> float | None:
    """engine.disk.bytes_per_token of `texts` under the model's tokenizer, measured in a limited
    child (engine.models.facts.corpus_bytes_per_token; a tokenizer.json from the hub is a stranger's
    file), once per model's files and sample in this process. A GGUF's tokenizer is read from the
    folder a worker converted it into, or from the file itself before any worker has."""
    import hashlib

    from engine.models.facts import hub_settings, model_identity
    from mistudio.sandbox import run_limited
    from training.hub import hub_token

    identity = model_identity(resolved)
    key = identity and (identity, hashlib.sha256("\0".join(texts).encode()).hexdigest())
    if key in _MEASURED:
        answer = _MEASURED[key]
    else:
        converted = None
        if resolved.gguf_file is not None:
            from engine.models.gguf import gguf_identity

            converted = str(settings.MODELS_CACHE_DIR / gguf_identity(resolved.gguf_file))
        model = {"name": resolved.name, "location": resolved.location, "source": resolved.source,
                 "revision": resolved.revision}
        try:
            answer = run_limited("engine.models.facts:corpus_bytes_per_token", model, texts, token=hub_token(token),
                                 hub=hub_settings(timeout_s=settings.HUB_TIMEOUT_S),
                                 max_file_bytes=settings.TOKENIZER_MAX_BYTES, converted_dir=converted,
                                 expected=("EngineError", "ModelResolutionError", "OSError", "ValueError"),
                                 what=f"the tokenizer of {resolved.name!r}")
        except Exception as err:  # noqa: BLE001 - kept: asking again would read the same files
            answer = err
        if key:
            if len(_MEASURED) >= 256:
                _MEASURED.clear()
            _MEASURED[key] = answer
    if isinstance(answer, Exception):
        raise answer
    return answer


# (model identity, sample digest) -> bytes per token, or what the child said instead.
_MEASURED: dict = {}


def _gb(n: int) -> float:
    return round(n / GB, 6)  # to the kB: a small corpus's cache is well under a GB


def _reason(reason: str, estimate: dict) -> str:
    return f"{reason}; tokens estimated at {estimate['tokens_estimated_from']}"

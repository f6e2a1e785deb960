"""A real English corpus for the benchmarks, in the app's corpus format (one sequence per
non-empty line), with a held-out split: Debian's fortune cookies (package `fortunes`, ~2.6 MB of
quotations, jokes, definitions and verse; the ASCII-art files left out) and, with
--sources fortunes,python-docs, the prose paragraphs of Python's reStructuredText documentation
(package `python3-doc`). Installs the packages with apt-get when their files are missing; needs
nothing from the app or the bench venv (any python3):

    python3 bench/english_corpus.py --out /tmp/corpus            # train.txt, heldout.txt
    python3 bench/english_corpus.py --out /tmp/corpus --train-lines 2000 --heldout-lines 200

Fortunes are shuffled (fixed seed) and packed, in that order, into lines of at most --line-chars
characters (about 120 SmolLM2 tokens at the default 500), so a sequence has some context rather
than one two-line joke. The held-out lines come from the same shuffle, after the training lines,
so no fortune is in both files. Prints the line counts and characters of each file.
"""

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

FORTUNES = Path("/usr/share/games/fortunes")
PYTHON_DOCS = Path(f"/usr/share/doc/python{sys.version_info.major}.{sys.version_info.minor}/html/_sources")
NOT_PROSE = {"art", "ascii-art"}  # pictures made of characters


def ensure_package(package: str, path: Path) -> None:
    if path.exists():
        return
    if shutil.which("apt-get") is None:
        raise SystemExit(f"{path} is missing and there is no apt-get to install {package}")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    print(f"installing {package} (apt-get) for {path}", file=sys.stderr)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-q", package], check=True, stdout=subprocess.DEVNULL)
    if not path.exists():
        raise SystemExit(f"{package} installed but {path} is still missing")


def fortunes() -> list[str]:
    ensure_package("fortunes", FORTUNES)
    texts = []
    for path in sorted(FORTUNES.iterdir()):
        if path.suffix or path.is_symlink() or path.name in NOT_PROSE:
            continue  # .dat indexes, .u8 links
        for entry in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            text = " ".join(entry.replace("%", " ").split())
            if len(text) >= 20:
                texts.append(text)
    return texts


def python_docs() -> list[str]:
    """Paragraphs of the .rst sources that read as prose: no directives, code, tables or titles."""
    source = PYTHON_DOCS
    if not source.exists():
        ensure_package("python3-doc", Path("/usr/share/doc/python3-doc"))
        candidates = sorted(Path("/usr/share/doc").glob("python3.*/html/_sources"))
        if not candidates:
            raise SystemExit("python3-doc installed but no /usr/share/doc/python3.*/html/_sources")
        source = candidates[-1]
    texts = []
    for path in sorted(source.rglob("*.txt")):
        for paragraph in re.split(r"\n\s*\n", path.read_text(encoding="utf-8", errors="replace")):
            if paragraph.startswith((" ", "\t", "..", ">>>", "=", "-", "*", "+", "|")):
                continue
            text = " ".join(paragraph.split())
            letters = sum(c.isalpha() or c == " " for c in text)
            if len(text) >= 80 and letters >= 0.85 * len(text):
                texts.append(text)
    return texts


SOURCES = {"fortunes": fortunes, "python-docs": python_docs}


def packed(texts: list[str], line_chars: int) -> list[str]:
    """Consecutive texts joined with spaces into lines of at most line_chars (a longer text is
    a line of its own, cut at line_chars)."""
    lines, current = [], ""
    for text in texts:
        text = text[:line_chars]
        if current and len(current) + 1 + len(text) > line_chars:
            lines.append(current)
            current = ""
        current = f"{current} {text}" if current else text
    if current:
        lines.append(current)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for train.txt and heldout.txt")
    parser.add_argument("--sources", default="fortunes", help=f"comma-separated, from: {', '.join(SOURCES)}")
    parser.add_argument("--train-lines", type=int, default=None, help="default: all lines but the held-out ones")
    parser.add_argument("--heldout-lines", type=int, default=300)
    parser.add_argument("--line-chars", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    texts = []
    for name in (name.strip() for name in args.sources.split(",") if name.strip()):
        if name not in SOURCES:
            parser.error(f"unknown source {name!r}: choose from {', '.join(SOURCES)}")
        texts.extend(SOURCES[name]())
    random.Random(args.seed).shuffle(texts)
    lines = packed(texts, args.line_chars)
    heldout = lines[-args.heldout_lines :] if args.heldout_lines else []
    train = lines[: len(lines) - len(heldout)]
    if args.train_lines is not None:
        if args.train_lines > len(train):
            raise SystemExit(f"only {len(train)} training lines available, not {args.train_lines}")
        train = train[: args.train_lines]
    args.out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train.txt", train), ("heldout.txt", heldout)):
        (args.out / name).write_text("\n".join(part) + "\n", encoding="utf-8")
        print(f"{args.out / name}: {len(part)} lines, {sum(map(len, part)):,} characters")


if __name__ == "__main__":
    main()

"""Peak RSS of `nmt translate` over a long stream against a short one: memory must not grow with input.

    .venv/bin/python bench/stream_memory.py [-m MODEL] [--lines 2000,200000] [--rounds 1]

Without -m it trains a tiny model on data/ first (about a minute). Each run is a fresh process reading
the lines (data/train.en, repeated) from a file, greedy, output to a file with -o and to stdout; the
peak RSS is the process's own (wait4), so nothing else on the machine counts.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NMT = [sys.executable, "-m", "nmt_cli"]


def tiny_model(work: Path) -> Path:
    run = work / "run"
    subprocess.run(
        [*NMT, "train", "--src", ROOT / "data/train.en", "--tgt", ROOT / "data/train.de", "-o", run]
        + ["--preset", "tiny", "--max-steps", "100", "--vocab-size", "300", "-q"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return run / "last.nmt"


def stream(work: Path, lines: int) -> Path:
    source = (ROOT / "data/train.en").read_bytes().splitlines(keepends=True)
    path = work / f"src-{lines}.txt"
    with open(path, "wb") as f:
        for n in range(lines):
            f.write(source[n % len(source)])
    return path


def peak_rss_mb(model: Path, src: Path, output: Path | None) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of one translate process."""
    args = [*NMT, "translate", "-m", str(model), str(src), "-b", "1", "-q"]
    args += ["-o", str(output)] if output is not None else []
    began = time.time()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"translate failed: {args}")
    return usage.ru_maxrss / 1024, time.time() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", type=Path)
    parser.add_argument("--lines", default="2000,200000")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    counts = [int(n) for n in args.lines.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = args.model or tiny_model(work)
        print("lines\toutput\tpeak RSS MB\tseconds\tratio to the first")
        for where in ("stdout", "-o"):
            first = None
            for lines in counts:
                src = stream(work, lines)
                for _ in range(args.rounds):
                    out = work / "out.txt" if where == "-o" else None
                    mb, seconds = peak_rss_mb(model, src, out)
                    first = first or mb
                    print(f"{lines}\t{where}\t{mb:.1f}\t{seconds:.1f}\t{mb / first:.3f}", flush=True)
                src.unlink()


if __name__ == "__main__":
    main()

"""Summarise one bench/quality.sh run directory as a Markdown row for BENCHMARKS.md (on stdout).

Also draws the learning curve into RUN/learning-curve.png: dev BLEU at each validation and greedy test
BLEU of the per-minute snapshots, against wall-clock minutes of training.

    python bench/quality_row.py RUN PRESET DIRECTION        the row, and RUN/learning-curve.png
    python bench/quality_row.py --plot OUT.png [LABEL=]RUN ...  several runs' curves in one picture
"""

from __future__ import annotations

import json
import re
import sys
from datetime import date
from pathlib import Path


def time_v(path: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS (KB) from `/usr/bin/time -v` output."""
    text = path.read_text()
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text).group(1)
    seconds = sum(float(p) * 60**i for i, p in enumerate(reversed(wall.split(":"))))
    return seconds, int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))


def steady_tok_s(log: list[dict]) -> float:
    """Tokens over time of the report windows starting 60 s or more into training, validation left out."""
    train = [r for r in log if r["kind"] == "train"]
    windows = [(a, b) for a, b in zip(train, train[1:], strict=False) if a["wall"] >= 60]
    tokens = sum(b["tokens"] - a["tokens"] for a, b in windows)
    seconds = sum((b["tokens"] - a["tokens"]) / b["tok_s"] for a, b in windows)
    return tokens / seconds if seconds else float("nan")


def curve(run: Path) -> list[tuple[float, float]]:
    points = []
    for path in sorted(run.glob("min-*.json")):
        minute = int(path.stem.split("-")[1])
        points.append((minute, json.loads(path.read_text())[0]["score"]))
    return points


def dev_curve(run: Path) -> list[tuple[float, float]]:
    """(minutes, dev BLEU) of each validation in RUN/log.jsonl."""
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [
        (r["wall"] / 60, r["dev_bleu"]) for r in log if r["kind"] == "valid" and r.get("dev_bleu") is not None
    ]


def draw(runs: list[tuple[str, Path]], path: Path, title: str) -> None:
    """Dev BLEU (solid) and greedy test BLEU of the snapshots (dashed) by wall-clock minute, per run."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.8), dpi=100)
    ax = fig.add_subplot()
    for i, (label, run) in enumerate(runs):
        colour = f"C{i}"
        dev, test = dev_curve(run), curve(run)
        if dev:
            ax.plot(*zip(*dev, strict=True), color=colour, marker="o", label=f"{label}: dev")
        if test:
            ax.plot(
                *zip(*test, strict=True), color=colour, marker=".", linestyle="--", label=f"{label}: test2016"
            )
    ax.axhline(30.0, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("wall-clock minutes of training")
    ax.set_ylabel("BLEU (greedy)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main(run: Path, preset: str, direction: str) -> None:
    wall, rss_kb = time_v(run / "train.time")
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    summary = dict(line.split("\t", 1) for line in (run / "train.out").read_text().splitlines())
    scores = {b: {r["name"]: r for r in json.loads((run / f"test.b{b}.json").read_text())} for b in (1, 5)}
    points = curve(run)
    draw([(preset, run)], run / "learning-curve.png", f"{preset} {direction}")
    first30 = next((m for m, b in points if b >= 30.0), None)
    commit = (run / "commit").read_text().strip()  # written by quality.sh when training began
    g, b = scores[1], scores[5]
    cells = [
        str(date.today()),
        commit,
        preset,
        direction,
        summary["steps"],
        summary["epochs"],
        f"{steady_tok_s(log):.0f}",
        f"{g['BLEU']['score']:.2f} / {g['chrF']['score']:.2f}",
        f"{b['BLEU']['score']:.2f} / {b['chrF']['score']:.2f}",
        "-" if first30 is None else str(first30),
        f"{rss_kb / 1024:.0f} MB",
        f"{wall:.0f} s",
    ]
    print("| " + " | ".join(cells) + " |")
    print(f"signatures: BLEU {b['BLEU']['signature']}; chrF {b['chrF']['signature']}", file=sys.stderr)
    print("curve (minute, greedy BLEU): " + ", ".join(f"{m}: {s:.1f}" for m, s in points), file=sys.stderr)


def label(run: Path) -> str:
    """bench-PRESET-SRC-TGT-DATE-TIME -> PRESET SRC-TGT"""
    parts = run.name.split("-")[1:-2]
    return f"{'-'.join(parts[:-2])} {parts[-2]}-{parts[-1]}"


if __name__ == "__main__":
    if sys.argv[1] == "--plot":  # each RUN may be LABEL=RUN
        runs = [(a.split("=", 1) if "=" in a else (label(Path(a)), a)) for a in sys.argv[3:]]
        title = "Multi30k, 2 CPU cores, 15-minute budget"
        draw([(name, Path(r)) for name, r in runs], Path(sys.argv[2]), title)
    else:
        main(Path(sys.argv[1]), sys.argv[2], sys.argv[3])

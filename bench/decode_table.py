"""Medians of the runs of bench/decode.sh as a Markdown table: python bench/decode_table.py OUT REPEATS."""

from __future__ import annotations

import re
import statistics
import sys
from pathlib import Path

LINES = 1000
TRANSLATED = re.compile(r"translated (\d+) lines in ([\d.]+)s")


def wall_seconds(text: str) -> float:
    """'Elapsed (wall clock) time (h:mm:ss or m:ss): 0:05.12' -> 5.12."""
    clock = re.search(r"Elapsed \(wall clock\) time.*: ([\d:.]+)", text).group(1)
    seconds = 0.0
    for part in clock.split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


def peak_mb(text: str) -> float:
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1)) / 1024


def runs(out: Path, name: str, version: str, repeats: int) -> dict[str, float]:
    """Medians over the repeats: whole-process and decode-only sentences/s, peak RSS (MB)."""
    whole, decode, rss = [], [], []
    for repeat in range(1, repeats + 1):
        tag = f"{name}.{version}.{repeat}"
        timing = (out / f"{tag}.time").read_text()
        lines, seconds = TRANSLATED.search((out / f"{tag}.err").read_text()).groups()
        assert int(lines) == LINES, f"{tag}: {lines} lines"
        whole.append(LINES / wall_seconds(timing))
        decode.append(LINES / float(seconds))
        rss.append(peak_mb(timing))
    return {
        "whole": statistics.median(whole),
        "decode": statistics.median(decode),
        "rss": statistics.median(rss),
        "spread": (min(decode), max(decode)),
    }


def main(out: Path, repeats: int) -> None:
    scores = [line.split("\t") for line in (out / "scores.tsv").read_text().splitlines()]
    rows = {(n, v): runs(out, n, v, repeats) | {"bleu": b, "chrf": c} for n, v, b, c in scores}
    revs = {v: (out / f"rev-{v}").read_text().strip() for _, v in rows if (out / f"rev-{v}").exists()}
    header = ["configuration", "rev", "sent/s whole process", "sent/s decode only (min-max)", "peak RSS MB"]
    print("| " + " | ".join(header) + " | BLEU | chrF |")
    print("|---|---|---|---|---|---|---|")
    for (name, version), r in rows.items():
        low, high = r["spread"]
        decode = f"{r['decode']:.1f} ({low:.0f}-{high:.0f})"
        print(
            f"| {name} | {revs[version]} | {r['whole']:.1f} | {decode} | {r['rss']:.0f} "
            f"| {r['bleu']} | {r['chrf']} |"
        )
    for name in [n for n, v in rows if v == "old" and (n, "new") in rows]:
        new, old = rows[(name, "new")], rows[(name, "old")]
        print(
            f"\n{name}: new/old = {new['decode'] / old['decode']:.2f}x decode only, "
            f"{new['whole'] / old['whole']:.2f}x whole process, peak RSS {new['rss'] - old['rss']:+.0f} MB",
            end="",
        )
    print()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))

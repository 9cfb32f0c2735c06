"""The table of one bench/peers.sh run: nmt and OpenNMT-py side by side, each figure with their ratio.

    python bench/peers_table.py OUT MINUTES        Markdown on stdout

Reads what peers.sh left in OUT: the matmul rates before and after, both training logs and
/usr/bin/time -v files, the decoding runs (medians over the repeats), scores.txt and curve.txt.
"""

from __future__ import annotations

import json
import platform
import re
import statistics
import sys
from datetime import date
from pathlib import Path

from nmt_cli.benchmark import forward_macs_per_token
from nmt_cli.config import ModelConfig, from_dict, preset

# OpenNMT-py 3.5.1's report line (onmt/utils/statistics.py): "Step N/MAX; acc: …; ppl: …; xent: …; lr: …;
# sents: …; bsz: SRC/TGT/SENTS; SRC_TOK/TGT_TOK tok/s; SECONDS sec;"
ONMT_REPORT = re.compile(
    r"Step\s+(\d+)(?:/\s*\d+)?;.*?bsz:\s*\d+/\s*(\d+)/\s*\d+;\s*\d+/\s*(\d+) tok/s;\s*(\d+) sec"
)
ONMT_DECODE = re.compile(r"Total translation time \(s\): ([\d.]+)")
NMT_DECODE = re.compile(r"translated (\d+) lines in ([\d.]+)s")


def time_v(path: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) from `/usr/bin/time -v` output."""
    text = path.read_text()
    clock = re.search(r"Elapsed \(wall clock\) time.*: ([\d:.]+)", text).group(1)
    seconds = sum(float(p) * 60**i for i, p in enumerate(reversed(clock.split(":"))))
    return seconds, int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1)) / 1024


def nmt_training(out: Path) -> dict[str, float]:
    """Updates, tokens and steady tokens/s (windows from 60 s, validation left out) of nmt's log.jsonl."""
    log = [json.loads(line) for line in (out / "nmt/run/log.jsonl").read_text().splitlines()]
    train = [r for r in log if r["kind"] == "train"]
    windows = [(a, b) for a, b in zip(train, train[1:], strict=False) if a["wall"] >= 60]
    tokens = sum(b["tokens"] - a["tokens"] for a, b in windows)
    seconds = sum((b["tokens"] - a["tokens"]) / b["tok_s"] for a, b in windows)
    return dict(
        updates=max(r["step"] for r in log),
        tokens=train[-1]["tokens"],
        steady=tokens / seconds if seconds else 0,
    )


def onmt_training(out: Path) -> dict[str, float]:
    """The same from OpenNMT-py's report lines (train.out): tokens of a window = mean target tokens per
    batch x its updates, its time = those tokens / its target tok/s. `timeout` ends it, so the updates after
    its last report (fewer than report_every) are not counted."""
    reports = [
        (int(m[1]), int(m[2]), int(m[3]), int(m[4]))
        for m in ONMT_REPORT.finditer((out / "onmt/train.out").read_text())
    ]
    steps = [(0, 0, 0, 0), *reports]
    windows = [(a, b) for a, b in zip(steps, steps[1:], strict=False)]
    tokens = [b[1] * (b[0] - a[0]) for a, b in windows]
    steady = [(t, t / b[2]) for t, (a, b) in zip(tokens, windows, strict=True) if a[3] >= 60 and b[2]]
    seconds = sum(s for _, s in steady)
    return dict(
        updates=reports[-1][0] if reports else 0,
        tokens=sum(tokens),
        steady=sum(t for t, _ in steady) / seconds if seconds else 0,
    )


def decoding(out: Path, tool: str, beam: int) -> dict[str, float]:
    """Medians over the repeats: whole-process and decode-only sentences/s, peak RSS (MB)."""
    whole, only, rss = [], [], []
    for time_file in sorted((out / "decode").glob(f"{tool}.b{beam}.*.time")):
        seconds, mb = time_v(time_file)
        text = time_file.with_suffix(".err").read_text()
        if tool == "nmt":
            lines, decode_s = NMT_DECODE.findall(text)[-1]
            lines = int(lines)
        else:
            lines, decode_s = 1000, ONMT_DECODE.findall(text)[-1]
        whole.append(lines / seconds)
        only.append(lines / float(decode_s))
        rss.append(mb)
    return dict(whole=statistics.median(whole), only=statistics.median(only), rss=statistics.median(rss))


def scores(out: Path) -> dict[tuple[str, int], tuple[float, float]]:
    """(tool, beam) -> (BLEU, chrF) from scores.txt lines "nmt b5 38.12 58.90"."""
    table = {}
    for line in (out / "scores.txt").read_text().splitlines():
        tool, beam, bleu, chrf = line.split()
        table[tool, int(beam[1:])] = (float(bleu), float(chrf))
    return table


def best_rate(path: Path) -> tuple[float, float, float]:
    rates = json.loads(path.read_text())
    return rates["mm"], rates["onednn"], max(rates["mm"], rates["onednn"])


def epoch_tokens(out: Path) -> int:
    """Target tokens per epoch (pieces + EOS) with this run's SentencePiece model."""
    with open(out / "onmt/data/train.en", encoding="utf-8") as f:
        return sum(len(line.split()) + 1 for line in f)


def mflop_per_token(out: Path) -> float:
    """Forward + backward MFLOP per target token of the protocol model, source pieces per target token
    from this run's data."""
    counts = {}
    for lang in ("de", "en"):
        with open(out / f"onmt/data/train.{lang}", encoding="utf-8") as f:
            counts[lang] = sum(len(line.split()) + (lang == "en") for line in f)
    cfg = from_dict(ModelConfig, {**preset("base-rnn")[0], "vocab_size": 8000})
    return 3 * 2 * forward_macs_per_token(cfg, counts["de"] / counts["en"]) / 1e6


def row(name: str, ours: float, theirs: float, digits: int = 0, diff: bool = False) -> str:
    """A table row; a steady figure is 0 where no report window started 60 s into training: "–"."""
    if not (ours or theirs):
        return f"| {name} | – | – | – |"
    relation = f"{ours - theirs:+.2f}" if diff else (f"{ours / theirs:.2f}×" if theirs else "–")
    return f"| {name} | {ours:,.{digits}f} | {theirs:,.{digits}f} | {relation} |"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(out: Path, minutes: str) -> None:
    ours, theirs = nmt_training(out), onmt_training(out)
    (nmt_wall, nmt_rss), (onmt_wall, onmt_rss) = (
        time_v(out / "nmt/train.time"),
        time_v(out / "onmt/train.time"),
    )
    before, after = best_rate(out / "matmul.before.json"), best_rate(out / "matmul.after.json")
    best = (before[2] + after[2]) / 2
    mflop, per_epoch, score = mflop_per_token(out), epoch_tokens(out), scores(out)
    print(f"Same-run peers: {date.today()}, {cpu_name()}, {minutes} min of training each, de→en test2016")
    print(
        f"best fp32 matmul GFLOP/s (2048², best of 5): torch.mm {before[0]:.0f} before / "
        f"{after[0]:.0f} after, oneDNN {before[1]:.0f} / {after[1]:.0f}; "
        f"useful work {mflop:.1f} MFLOP per target token\n"
    )
    print("| | nmt base-rnn | OpenNMT-py 3.5.1 | nmt / OpenNMT-py |")
    print("|---|---|---|---|")
    print(row("updates (the last logged)", ours["updates"], theirs["updates"]))
    scored = int((out / "onmt/last-step").read_text())
    print(row("update of the scored checkpoint", ours["updates"], scored))
    print(
        row(
            "real target tokens per update",
            ours["tokens"] / ours["updates"],
            theirs["tokens"] / theirs["updates"],
        )
    )
    print(row("epochs", ours["tokens"] / per_epoch, theirs["tokens"] / per_epoch, 2))
    print(row("steady train tok/s (windows from 60 s)", ours["steady"], theirs["steady"]))
    print(row("whole-run train tok/s", ours["tokens"] / nmt_wall, theirs["tokens"] / onmt_wall))
    print(
        row(
            "steady useful FLOP/s, % of the best matmul rate",
            100 * ours["steady"] * mflop / 1e3 / best,
            100 * theirs["steady"] * mflop / 1e3 / best,
            1,
        )
    )
    print(row("train peak RSS (MB)", nmt_rss, onmt_rss))
    for beam in (1, 5):
        label = "greedy" if beam == 1 else "beam 5"
        print(row(f"test BLEU, {label}", score["nmt", beam][0], score["onmt", beam][0], 2, diff=True))
        print(row(f"test chrF, {label}", score["nmt", beam][1], score["onmt", beam][1], 2, diff=True))
    for beam in (1, 5):
        label = "greedy" if beam == 1 else "beam 5"
        a, b = decoding(out, "nmt", beam), decoding(out, "onmt", beam)
        print(row(f"{label} sent/s, whole process", a["whole"], b["whole"], 1))
        print(row(f"{label} sent/s, decode only", a["only"], b["only"], 1))
        print(row(f"{label} translate peak RSS (MB)", a["rss"], b["rss"]))
    curve = out / "curve.txt"
    if curve.exists() and curve.read_text().strip():
        print("\n| updates | nmt greedy test BLEU | OpenNMT-py greedy test BLEU |")
        print("|---|---|---|")
        points = sorted(tuple(line.split()) for line in curve.read_text().splitlines())
        for step, a, b in sorted(points, key=lambda p: int(p[0])):
            print(f"| {step} | {float(a):.2f} | {float(b):.2f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])

"""The table of one bench/peers.sh run: nmt and OpenNMT-py side by side, each figure with their ratio.

    python bench/peers_table.py OUT MINUTES        Markdown on stdout

Reads what peers.sh left in OUT: the matmul rates before and after, the training logs and
/usr/bin/time -v files, the decoding runs (medians over the repeats), scores.txt and curve.txt. Where the
run trained an earlier commit of nmt too (BEFORE), it has its own column and its own ratio.
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


def nmt_training(out: Path, tool: str = "nmt") -> dict[str, float]:
    """Updates, tokens and steady tokens/s (windows from 60 s, validation left out) of nmt's log.jsonl."""
    log = [json.loads(line) for line in (out / tool / "run/log.jsonl").read_text().splitlines()]
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
        if tool != "onmt":
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


def row(name: str, ours: list[float], theirs: float, digits: int = 0, diff: bool = False) -> str:
    """A table row: each nmt column, OpenNMT-py's, then each nmt column against it (a ratio, or a
    difference where `diff`); a steady figure is 0 where no report window started 60 s into training: "–"."""
    if not (any(ours) or theirs):
        return "| " + " | ".join([name] + ["–"] * (2 * len(ours) + 1)) + " |"

    def relation(value: float) -> str:
        if diff:
            return f"{value - theirs:+.2f}"
        return f"{value / theirs:.2f}×" if theirs else "–"

    cells = [f"{v:,.{digits}f}" for v in ours] + [f"{theirs:,.{digits}f}"] + [relation(v) for v in ours]
    return "| " + " | ".join([name, *cells]) + " |"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(out: Path, minutes: str) -> None:
    tools = ["nmt"] + (["before"] if (out / "before/commit").exists() else [])
    commit = {
        t: (out / t / "commit").read_text().strip() if (out / t / "commit").exists() else t for t in tools
    }
    ours = {t: nmt_training(out, t) for t in tools}
    theirs = onmt_training(out)
    wall_rss = {t: time_v(out / t / "train.time") for t in tools}
    onmt_wall, onmt_rss = time_v(out / "onmt/train.time")
    before, after = best_rate(out / "matmul.before.json"), best_rate(out / "matmul.after.json")
    best = (before[2] + after[2]) / 2
    mflop, per_epoch, score = mflop_per_token(out), epoch_tokens(out), scores(out)
    print(f"Same-run peers: {date.today()}, {cpu_name()}, {minutes} min of training each, de→en test2016")
    print(
        f"best fp32 matmul GFLOP/s (2048², best of 5): torch.mm {before[0]:.0f} before / "
        f"{after[0]:.0f} after, oneDNN {before[1]:.0f} / {after[1]:.0f}; "
        f"useful work {mflop:.1f} MFLOP per target token\n"
    )
    names = [f"nmt {commit[t]}" for t in tools]
    print(
        "| | "
        + " | ".join(f"{n} base-rnn" for n in names)
        + " | OpenNMT-py 3.5.1 | "
        + " | ".join(f"{n} / OpenNMT-py" for n in names)
        + " |"
    )
    print("|---" * (2 * len(tools) + 2) + "|")

    def each(fn) -> list[float]:
        return [fn(t) for t in tools]

    print(row("updates (the last logged)", each(lambda t: ours[t]["updates"]), theirs["updates"]))
    scored = int((out / "onmt/last-step").read_text())
    print(row("update of the scored checkpoint", each(lambda t: ours[t]["updates"]), scored))
    print(
        row(
            "real target tokens per update",
            each(lambda t: ours[t]["tokens"] / ours[t]["updates"]),
            theirs["tokens"] / theirs["updates"],
        )
    )
    print(row("epochs", each(lambda t: ours[t]["tokens"] / per_epoch), theirs["tokens"] / per_epoch, 2))
    print(row("steady train tok/s (windows from 60 s)", each(lambda t: ours[t]["steady"]), theirs["steady"]))
    print(
        row(
            "whole-run train tok/s",
            each(lambda t: ours[t]["tokens"] / wall_rss[t][0]),
            theirs["tokens"] / onmt_wall,
        )
    )
    print(
        row(
            "steady useful FLOP/s, % of the best matmul rate",
            each(lambda t: 100 * ours[t]["steady"] * mflop / 1e3 / best),
            100 * theirs["steady"] * mflop / 1e3 / best,
            1,
        )
    )
    print(row("train peak RSS (MB)", each(lambda t: wall_rss[t][1]), onmt_rss))
    for beam in (1, 5):
        label = "greedy" if beam == 1 else "beam 5"
        for i, metric in enumerate(("BLEU", "chrF")):
            print(
                row(
                    f"test {metric}, {label}",
                    each(lambda t, beam=beam, i=i: score[t, beam][i]),
                    score["onmt", beam][i],
                    2,
                    diff=True,
                )
            )
    for beam in (1, 5):
        label = "greedy" if beam == 1 else "beam 5"
        ds = {t: decoding(out, t, beam) for t in [*tools, "onmt"]}
        for key, what, digits in (
            ("whole", "sent/s, whole process", 1),
            ("only", "sent/s, decode only", 1),
            ("rss", "translate peak RSS (MB)", 0),
        ):
            print(row(f"{label} {what}", each(lambda t, key=key, ds=ds: ds[t][key]), ds["onmt"][key], digits))
    curve = out / "curve.txt"
    if curve.exists() and curve.read_text().strip():
        print(
            "\n| updates | "
            + " | ".join(f"{n} greedy test BLEU" for n in names[:1])
            + " | OpenNMT-py greedy test BLEU"
            + "".join(f" | {n} greedy test BLEU" for n in names[1:])
            + " |"
        )
        print("|---" * (len(tools) + 2) + "|")
        points = [line.split() for line in curve.read_text().splitlines()]
        for point in sorted(points, key=lambda p: int(p[0])):
            cells = [f"{float(v):.2f}" for v in point[1:3]] + [f"{float(v):.2f}" for v in point[3:]]
            cells += ["–"] * (len(tools) + 1 - len(cells))
            print("| " + " | ".join([point[0], *cells]) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])

"""Multi30k with and without word vectors trained on the training data's own sides, same time budget.

Usage: python bench/vectors_ab.py [--src de] [--tgt en] [--budget 8m] [--preset toy] [--dim 128] [--threads 1]
Trains skip-gram vectors of the preset's embedding size on train.SRC and train.TGT (bench/word_vectors.py,
gensim), one joint 8k subword model, then two runs that differ only in --src-vectors/--tgt-vectors,
side by side (each with --threads, so both see the same machine load). Every run saves a snapshot each
minute; the table gives greedy test BLEU of each snapshot and of the best model, the training loss at each
minute from log.jsonl, and each run's coverage line. Writes runs/vectors-ab-DATE/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
NMT = str(BIN / "nmt")


def sh(*args: object, stdout: Path | None = None) -> str:
    out = subprocess.run([str(a) for a in args], check=True, capture_output=stdout is None, text=True)
    return out.stdout if stdout is None else ""


def test_bleu(model: Path, data: Path, s: str, t: str) -> float:
    hyp = model.with_suffix(".test")
    sh(NMT, "translate", "-q", "-m", model, "-b", 1, data / f"test_2016_flickr.{s}", "-o", hyp)
    result = sh(NMT, "evaluate", "--json", "--metrics", "bleu", "-r", data / f"test_2016_flickr.{t}", hyp)
    return json.loads(result)[0]["score"]


def loss_by_minute(log: Path) -> dict[int, float]:
    """The last training loss reported before each full minute."""
    losses: dict[int, float] = {}
    for line in log.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if r["kind"] == "train":
            losses[int(r["wall"] // 60) + 1] = r["loss"]
    return losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", default="de")
    ap.add_argument("--tgt", default="en")
    ap.add_argument("--budget", default="8m")
    ap.add_argument("--preset", default="toy")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dim", type=int, default=128, help="The preset's emb_size.")
    args = ap.parse_args()
    s, t = args.src, args.tgt
    data = Path(os.environ.get("NMT_DATA", "../shared/data/multi30k"))
    out = Path("runs") / f"vectors-ab-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True)
    for lang in (s, t):
        sh(sys.executable, "bench/word_vectors.py", data / f"train.{lang}", "-o", out / f"vectors.{lang}.txt",
           "--dim", args.dim)  # fmt: skip
    sh(
        NMT,
        "prepare",
        "--src",
        data / f"train.{s}",
        "--tgt",
        data / f"train.{t}",
        "--vocab-size",
        8000,
        "-o",
        out,
    )
    common = [
        NMT, "train", "--preset", args.preset, "--src", data / f"train.{s}", "--tgt", data / f"train.{t}",
        "--dev-src", data / f"val.{s}", "--dev-tgt", data / f"val.{t}", "--spm", out / "spm.model",
        "--time-budget", args.budget, "--save-every-minutes", 1, "--threads", args.threads, "--log-every", 10,
        "--overwrite",
    ]  # fmt: skip
    variants = {
        "plain": [],
        "vectors": ["--src-vectors", out / f"vectors.{s}.txt", "--tgt-vectors", out / f"vectors.{t}.txt"],
    }
    procs = {}
    for name, extra in variants.items():
        with open(out / f"{name}.log", "w") as err, open(out / f"{name}.out", "w") as res:
            procs[name] = subprocess.Popen(
                [str(a) for a in common + extra + ["-o", out / name]], stdout=res, stderr=err
            )
    for name, p in procs.items():
        if p.wait():
            sys.exit(f"{name} failed: see {out / name}.log")
    for name in variants:
        run = out / name
        curve = {int(m.stem[4:]): test_bleu(m, data, s, t) for m in sorted(run.glob("min-*.nmt"))}
        best = test_bleu(run / "model.nmt", data, s, t)
        losses = loss_by_minute(run / "log.jsonl")
        coverage = [
            r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["kind"] == "vectors"
        ]
        steps = (out / f"{name}.out").read_text().split("steps\t")[1].split()[0]
        print(f"{name}: steps {steps}, best-model test BLEU {best:.2f}")
        print("  minute:     " + " ".join(f"{m:>6}" for m in sorted(curve)))
        print("  test BLEU:  " + " ".join(f"{curve[m]:6.2f}" for m in sorted(curve)))
        print("  train loss: " + " ".join(f"{losses.get(m, float('nan')):6.3f}" for m in sorted(curve)))
        for r in coverage:
            print(
                f"  {r['side']}: {r['pieces']}/{r['vocabulary']} pieces, "
                f"{100 * r['token_coverage']:.1f} % of tokens; uncovered {r['uncovered'][:5]}"
            )
    print(f"runs in {out}")


if __name__ == "__main__":
    main()

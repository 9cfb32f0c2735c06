#!/usr/bin/env bash
# Training speed of several revisions, interleaved, as ratios to the first: each round runs every variant
# once (`nmt bench train`, own process), so machine noise hits all of them alike; ratios are taken within
# rounds.
#
#   bench/train_ab.sh ROUNDS "VARIANT1 VARIANT2 ..." [nmt bench train options]
#   e.g. bench/train_ab.sh 3 "86efaa4 HEAD HEAD+plain" --preset base-rnn --steps 30 --skip 6 --spm SPM
#
# A variant is a revision, or REV+plain to run it with NMT_PLAIN=1 (the plain model, no CPU swaps), or
# REV+eager with NMT_COMPILE=0 (the CPU swaps without torch.compile's LSTM cell). Each
# revision runs from its own `git archive` copy (PYTHONPATH, python -P). Prints each round's steady
# tokens/s, then per variant the median and the median and range of its ratio to the first.
# Environment: THREADS (OMP_NUM_THREADS, default 2).
set -euo pipefail
rounds=${1:?rounds}
variants=${2:?variants}
shift 2
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
for variant in $variants; do
    rev=${variant%+*}
    if [ ! -d "$WORK/$rev" ]; then
        mkdir -p "$WORK/$rev"
        git -C "$ROOT" archive "$rev" nmt_cli | tar -x -C "$WORK/$rev"
    fi
done
export OMP_NUM_THREADS=${THREADS:-2}
for round in $(seq "$rounds"); do
    for variant in $variants; do
        rev=${variant%+*}
        plain=$([ "$variant" = "$rev+plain" ] && echo 1 || echo "")
        compile=$([ "$variant" = "$rev+eager" ] && echo 0 || echo "")
        rate=$(NMT_PLAIN=$plain NMT_COMPILE=$compile PYTHONPATH="$WORK/$rev" "$ROOT/.venv/bin/python" -P -c \
            'import sys; from nmt_cli.cli import main; sys.argv[0] = "nmt"; main()' bench train --json "$@" \
            2>/dev/null | "$ROOT/.venv/bin/python" -c 'import json, sys; print(round(json.load(sys.stdin)["tok_s"]))')
        echo "$round $variant $rate" | tee -a "$WORK/rates"
    done
done
"$ROOT/.venv/bin/python" - "$WORK/rates" <<'PY'
import statistics, sys
from collections import defaultdict
rates = defaultdict(dict)
for line in open(sys.argv[1]):
    round_, variant, rate = line.split()
    rates[round_][variant] = float(rate)
variants = list(next(iter(rates.values())))
for v in variants:
    ratios = [r[v] / r[variants[0]] for r in rates.values()]
    print(f"{v}: {statistics.median(r[v] for r in rates.values()):.0f} tok/s, "
          f"{statistics.median(ratios):.3f}x {variants[0]} ({min(ratios):.2f}-{max(ratios):.2f})")
PY

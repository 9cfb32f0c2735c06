#!/usr/bin/env bash
# Decode-only speed of several revisions, interleaved, as ratios to the first: on a shared machine the
# rate of one revision drifts by a fifth within minutes, so each round runs every revision once and
# the ratios are taken within rounds.
#
#   bench/decode_ab.sh ROUNDS "REV1 REV2 ..." MODEL [decode_timing.py options]
#   e.g. THREADS=1 bench/decode_ab.sh 8 "HEAD~3 HEAD HEAD+plain" runs/m30k/model.sl.nmt --int8 --shortlist 50
#
# A variant REV+plain runs REV with NMT_PLAIN=1 (the plain model, no CPU swaps).
# Each revision runs from its own `git archive` copy (PYTHONPATH, python -P) through
# bench/decode_timing.py (decode_ids over test_2016_flickr, model loaded, REPEATS passes, default 2).
# Prints each round, then per revision the median rate and the median and range of its ratio to REV1.
# Environment: NMT_DATA, THREADS (OMP_NUM_THREADS, default 2), REPEATS.
set -euo pipefail
rounds=${1:?rounds}
revs=${2:?revisions}
model=$(realpath "${3:?model}")
shift 3
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
for variant in $revs; do
    rev=${variant%+plain}
    if [ ! -d "$WORK/$rev" ]; then
        mkdir -p "$WORK/$rev"
        git -C "$ROOT" archive "$rev" nmt_cli | tar -x -C "$WORK/$rev"
    fi
done
export OMP_NUM_THREADS=${THREADS:-2}
for round in $(seq "$rounds"); do
    for variant in $revs; do
        rev=${variant%+plain}
        plain=$([ "$variant" != "$rev" ] && echo 1 || echo "")
        rate=$(NMT_PLAIN=$plain PYTHONPATH="$WORK/$rev" "$ROOT/.venv/bin/python" -P "$ROOT/bench/decode_timing.py" \
            "$model" --repeats "${REPEATS:-2}" "$@")
        echo "$round $variant $rate" | tee -a "$WORK/rates"
    done
done
"$ROOT/.venv/bin/python" - "$WORK/rates" <<'PY'
import statistics, sys
from collections import defaultdict
rates = defaultdict(dict)
for line in open(sys.argv[1]):
    round_, rev, median, _ = line.split()
    rates[round_][rev] = float(median)
revs = list(next(iter(rates.values())))
for rev in revs:
    ratios = [r[rev] / r[revs[0]] for r in rates.values()]
    print(f"{rev}: {statistics.median(r[rev] for r in rates.values()):.1f} sentences/s, "
          f"{statistics.median(ratios):.3f}x {revs[0]} ({min(ratios):.2f}-{max(ratios):.2f})")
PY

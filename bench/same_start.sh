#!/usr/bin/env bash
# Where does OpenNMT-py's early per-update lead come from? nmt's base-rnn trained for STEPS updates from
# OpenNMT-py's initial weights (seed 1234, as onmt_train draws them), on OpenNMT-py's own first batches,
# or both; each run's test perplexity (forced decoding) and greedy BLEU at 100, 200 and STEPS updates, and
# the test perplexity of OpenNMT-py's own run in RUN at the same updates.
#
#   bench/same_start.sh RUN OUT [STEPS] [RUNS]   e.g. bench/same_start.sh runs/peers-15 runs/same-start 300
#
# RUN: a bench/peers.sh output directory; RUNS: any of "init batches both", the default (init: OpenNMT-py's
# weights on nmt's batches; batches: nmt's own weights on OpenNMT-py's batches). Every run is
# `nmt train --preset base-rnn --seed 1234` on RUN's prepared corpus (bench/same_model.py nmt-train);
# OpenNMT-py's batches replace nmt's first epoch only. Environment: NMT_DATA, ONMT_VENV as bench/peers.sh.
set -euo pipefail
RUN=$(realpath "${1:?a bench/peers.sh output directory}")
OUT=$(realpath -m "${2:?an output directory}")
STEPS=${3:-300}
RUNS=${4:-init batches both}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DATA=$(realpath "${NMT_DATA:-$ROOT/../shared/data/multi30k}")
ONMT_VENV=$(realpath -m "${ONMT_VENV:-$ROOT/runs/onmt-3.5.1}")
OPY=("$ONMT_VENV/bin/python" "$ROOT/bench/same_model.py")
PY=("$ROOT/.venv/bin/python" "$ROOT/bench/same_model.py")
NMT="$ROOT/.venv/bin/nmt"
mkdir -p "$OUT"
export PYTHONWARNINGS=ignore TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1  # OpenNMT-py loads its own pickled files
# OpenNMT-py's side: its seed-1234 weights (as plain tensors) and the lines of its first batches
"${OPY[@]}" onmt-init "$RUN/onmt/run/model_step_100.pt" 1234 "$OUT/onmt-init.pt"
"${OPY[@]}" onmt "$OUT/onmt-init.pt" "$RUN/onmt/data/val.de" "$RUN/onmt/data/val.en" "$OUT/onmt-init.tensors" 8 0
sed -e "s#^save_model: .*#save_model: $OUT/onmt/model#" -e "s#^log_file: .*#log_file: $OUT/onmt/batches.log#" \
    "$RUN/onmt/base-rnn.yaml" > "$OUT/onmt.yaml"
mkdir -p "$OUT/onmt"
"${OPY[@]}" onmt-batches "$OUT/onmt.yaml" "$((STEPS + 30))" "$OUT/onmt-batches.json" > "$OUT/onmt/batches.out" 2>&1
for step in 100 200 "$STEPS"; do  # OpenNMT-py's own run, where RUN kept the checkpoint
    ckpt="$RUN/onmt/run/model_step_$step.pt"
    [ -f "$ckpt" ] || continue
    ppl=$("${OPY[@]}" onmt-perplexity "$ckpt" "$RUN/onmt/data/test_2016_flickr.de" "$RUN/onmt/data/test_2016_flickr.en")
    echo "OpenNMT-py's run step $step: test perplexity $ppl"
done
for run in $RUNS; do
    weights=-; batches=-
    [ "$run" != batches ] && weights="$OUT/onmt-init.tensors"
    [ "$run" != init ] && batches="$OUT/onmt-batches.json"
    printf '[train]\nvalid_max_sentences = 100\n' > "$OUT/curve.toml"
    "${PY[@]}" nmt-train "$weights" "$batches" --preset base-rnn --data "$RUN/spm" --dev-src "$DATA/val.de" \
        --dev-tgt "$DATA/val.en" --seed 1234 --config "$OUT/curve.toml" --valid-every 100 --keep-last 100000 \
        --max-steps "$STEPS" --log-every 10 --overwrite -q -o "$OUT/$run" > "$OUT/$run.out" 2> "$OUT/$run.err"
    for step in 100 200 "$STEPS"; do
        model="$OUT/$run/step-$step.nmt"
        bleu=$("$NMT" translate -q -m "$model" -b 1 --batch-size 64 "$DATA/test_2016_flickr.de" \
            | "$NMT" evaluate -r "$DATA/test_2016_flickr.en" --metrics bleu --score-only)
        ppl=$("$NMT" score -q -m "$model" --src "$DATA/test_2016_flickr.de" --tgt "$DATA/test_2016_flickr.en" \
            | awk -F'\t' '{lp += $1; n += $2} END {printf "%.2f", exp(-lp / n)}')
        echo "$run step $step: test perplexity $ppl, greedy BLEU $bleu"
    done
done

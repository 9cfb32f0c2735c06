#!/usr/bin/env bash
# Is nmt's base-rnn OpenNMT-py's protocol model? From the weights of one of OpenNMT-py's checkpoints in a
# bench/peers.sh run, both tools take the loss and gradients of the same dev sentences (dropout off) and
# make the same updates with their own optimizers; prints how far apart they end (bench/same_model.py).
#
#   bench/same_model.sh RUN [STEP] [LINES] [UPDATES]   e.g. bench/same_model.sh runs/peers-15 100 64 3
#
# RUN: a bench/peers.sh output directory with CURVE_EVERY checkpoints (model_step_STEP.pt and nmt's
# step-STEP.nmt, whose config and SentencePiece model are used). Environment: NMT_DATA, ONMT_VENV as there.
set -euo pipefail
RUN=${1:?a bench/peers.sh output directory}
STEP=${2:-100}
LINES=${3:-64}
UPDATES=${4:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DATA=$(realpath "${NMT_DATA:-$ROOT/../shared/data/multi30k}")
ONMT_VENV=$(realpath -m "${ONMT_VENV:-$ROOT/runs/onmt-3.5.1}")
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
PYTHONWARNINGS=ignore "$ONMT_VENV/bin/python" "$ROOT/bench/same_model.py" onmt "$RUN/onmt/run/model_step_$STEP.pt" \
    "$RUN/onmt/data/val.de" "$RUN/onmt/data/val.en" "$OUT/onmt.pt" "$LINES" "$UPDATES"
"$ROOT/.venv/bin/python" "$ROOT/bench/same_model.py" nmt "$OUT/onmt.pt" "$RUN/nmt/run/step-$STEP.nmt" \
    "$DATA/val.de" "$DATA/val.en" "$LINES"

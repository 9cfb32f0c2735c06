#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md ("GPU") in one run, for a machine with a CUDA GPU and a CUDA build of
# torch: base-rnn training tokens/s (fp32 and bf16), a short base-rnn training on Multi30k de->en, greedy
# and beam-5 decoding speed and BLEU on test_2016_flickr at batch 64, and 2-process DDP tokens/s when the
# machine has 2 GPUs. Prints one line per figure and keeps everything under OUT.
#
#   bench/gpu_check.sh [OUT]           e.g. bench/gpu_check.sh runs/gpu-check
#
# Environment: PY (a Python whose torch sees CUDA; default .venv/bin/python), NMT_DATA (default
# ../shared/data/multi30k, or shared/data/multi30k inside the checkout), MINUTES (training budget, 5: enough
# for decoding speed; 15 for the protocol's BLEU), STEPS (bench updates, 60).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(realpath -m "${1:-runs/gpu-check}")
PY=${PY:-$ROOT/.venv/bin/python}
if [[ -z "${NMT_DATA:-}" ]]; then
    NMT_DATA=$ROOT/../shared/data/multi30k
    [[ -d $NMT_DATA ]] || NMT_DATA=$ROOT/shared/data/multi30k
fi
DATA=$(realpath "$NMT_DATA")
MINUTES=${MINUTES:-5}
STEPS=${STEPS:-60}
mkdir -p "$OUT"
nmt() { "$PY" -m nmt_cli "$@"; }

"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else f"no CUDA device (torch {torch.__version__})")'
GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
"$PY" -c 'import torch; print("gpu", torch.cuda.get_device_name(0), "x", torch.cuda.device_count(), "torch", torch.__version__)'

# 1. a short training run: the model for decoding (and its dev BLEU by minute in log.jsonl)
nmt train --preset base-rnn --device cuda --src "$DATA/train.de" --tgt "$DATA/train.en" \
    --dev-src "$DATA/val.de" --dev-tgt "$DATA/val.en" --time-budget "${MINUTES}m" --overwrite \
    -o "$OUT/run" --quiet > "$OUT/train.txt"
echo "train ${MINUTES}m: $(tr '\n' ' ' < "$OUT/train.txt")"
grep '"kind": "train"' "$OUT/run/log.jsonl" | tail -1 | sed 's/^/train last report: /'

# 2. decoding speed and BLEU, test_2016_flickr de->en, batch 64 (decode only: translate's own timing line)
for beam in 1 5; do
    nmt translate -m "$OUT/run/model.nmt" --device cuda --beam-size "$beam" --batch-size 64 \
        "$DATA/test_2016_flickr.de" -o "$OUT/test.beam$beam.en" 2> "$OUT/translate.beam$beam.log"
    bleu=$(nmt evaluate "$OUT/test.beam$beam.en" -r "$DATA/test_2016_flickr.en" 2>/dev/null | head -1)
    echo "beam $beam: $(grep '^translated' "$OUT/translate.beam$beam.log") | $bleu"
done

# 3. training throughput, fp32 then bf16 (the subword model of step 1)
for precision in fp32 bf16; do
    nmt bench train --preset base-rnn --device cuda --precision "$precision" --steps "$STEPS" \
        --src "$DATA/train.de" --tgt "$DATA/train.en" --spm "$OUT/run/spm.model" --json > "$OUT/bench.$precision.json"
    echo "bench train base-rnn cuda $precision: $("$PY" -c 'import json, sys; r = json.load(open(sys.argv[1])); print(f"{r[\"tok_s\"]:.0f} tok/s, peak RSS {r[\"peak_rss_mb\"]:.0f} MB")' "$OUT/bench.$precision.json")"
done

# 4. two processes, one GPU each (DDP over nccl), against one process, 300 updates each
if [[ $GPUS -ge 2 ]]; then
    for n in 1 2; do
        nmt train --preset base-rnn --device cuda --src "$DATA/train.de" --tgt "$DATA/train.en" \
            --spm "$OUT/run/spm.model" --max-steps 300 --valid-every 100000 --log-every 50 --overwrite \
            --nproc "$n" -o "$OUT/ddp$n" --quiet > /dev/null
        echo "train base-rnn x$n GPU: $(grep '"kind": "train"' "$OUT/ddp$n/log.jsonl" | tail -1)"
    done
else
    echo "one GPU: no DDP figure"
fi

#!/usr/bin/env bash
# The side-by-side protocol (../shared/BENCHMARKS-PEERS.md): Multi30k, joint SentencePiece 8k, a
# wall-clock training budget, then test_2016_flickr greedy and beam 5 scored with sacrebleu.
# Usage: bench/quality.sh PRESET [SRC TGT [BUDGET]]    e.g. bench/quality.sh cpu-15min de en 15m
# Writes runs/bench-PRESET-SRC-TGT-DATE/ and prints one Markdown row for BENCHMARKS.md.
# TRAIN_ARGS adds options to `nmt train` (e.g. TRAIN_ARGS=--input-feeding); the row's preset shows them.
set -euo pipefail
preset=${1:?preset}; s=${2:-de}; t=${3:-en}; budget=${4:-15m}
D=${NMT_DATA:-../shared/data/multi30k}
NMT=${NMT:-.venv/bin/nmt}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
out=runs/bench-$preset-$s-$t-$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"
# the code that trains: COMMIT when NMT points at another checkout, else this one's HEAD
echo "${COMMIT:-$(git rev-parse --short HEAD)}" > "$out/commit"
$NMT prepare --src "$D/train.$s" --tgt "$D/train.$t" --vocab-size 8000 -o "$out" > "$out/prepare.txt"
/usr/bin/time -v -o "$out/train.time" $NMT train --preset "$preset" --src "$D/train.$s" --tgt "$D/train.$t" \
    --dev-src "$D/val.$s" --dev-tgt "$D/val.$t" --spm "$out/spm.model" --time-budget "$budget" \
    --save-every-minutes 1 --overwrite ${TRAIN_ARGS:-} -o "$out" > "$out/train.out" 2> "$out/train.log"
for beam in 1 5; do
    $NMT translate -q -m "$out/model.nmt" -b $beam "$D/test_2016_flickr.$s" -o "$out/test.b$beam.$t"
    $NMT evaluate --json -r "$D/test_2016_flickr.$t" "$out/test.b$beam.$t" > "$out/test.b$beam.json"
done
# the learning curve by wall clock: greedy test BLEU of the snapshot saved every minute
for ckpt in "$out"/min-*.nmt; do
    $NMT translate -q -m "$ckpt" -b 1 "$D/test_2016_flickr.$s" \
        | $NMT evaluate --json --metrics bleu -r "$D/test_2016_flickr.$t" > "${ckpt%.nmt}.json"
done
$NMT curves "$out" -o "$out/curves.png" > /dev/null || true
.venv/bin/python bench/quality_row.py "$out" "$preset${TRAIN_ARGS:+ $TRAIN_ARGS}" "$s-$t"

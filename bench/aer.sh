#!/usr/bin/env bash
# Alignment error rate of each attention type on the toy corpus: BENCHMARKS.md, "Alignment error rate".
#
#   bench/aer.sh train     one toy model per attention type, one after another (~2.5 min each, 1 thread)
#   bench/aer.sh measure   forced-alignment AER against data/test.align, and greedy test BLEU
#   bench/aer.sh           both
#
# Gold alignments link the source to the reference words, so AER is measured by forced decoding of
# the reference (`nmt align --tgt`), not on the model's own translations.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs/aer}
TYPES=${TYPES:-"bahdanau dot general scaled-dot"}
PHASE=${1:-all}

nmt() { "$PYTHON" -m nmt_cli "$@"; }  # the nmt_cli of this checkout, whatever is installed

train() {
    nmt prepare --src data/train.en --tgt data/train.de --vocab-size 300 -o "$OUT"
    for type in $TYPES; do
        nmt train --preset toy --src data/train.en --tgt data/train.de \
            --dev-src data/dev.en --dev-tgt data/dev.de --spm "$OUT/spm.model" --time-budget 150 \
            --threads 1 --attention "$type" --overwrite -o "$OUT/$type"
    done
}

measure() {
    printf '| attention | AER (forced) | test BLEU (greedy) |\n|---|---|---|\n'
    for type in $TYPES; do
        model="$OUT/$type/model.nmt"
        aer=$(nmt align -m "$model" --src data/test.en --tgt data/test.de --gold data/test.align \
            --threads 1 --json -o "$OUT/$type/test.forced.align" | "$PYTHON" -c \
            'import json, sys; print(format(json.load(sys.stdin)["aer"], ".4f"))')
        nmt translate -m "$model" -b 1 --threads 1 -q data/test.en -o "$OUT/$type/test.greedy.de"
        bleu=$(nmt evaluate -r data/test.de "$OUT/$type/test.greedy.de" --metrics bleu --score-only)
        printf '| %s | %s | %s |\n' "$type" "$aer" "$bleu"
    done
}

case "$PHASE" in
    train) train ;;
    measure) measure ;;
    all) train && measure ;;
    *) echo "usage: bench/aer.sh [train|measure|all]" >&2; exit 2 ;;
esac

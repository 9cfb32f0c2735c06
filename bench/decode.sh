#!/usr/bin/env bash
# Decoding speed of `nmt translate` as BENCHMARKS-PEERS.md §1 measures it: the 1,000 lines of
# Multi30k test_2016_flickr.de (de->en), batch 64, greedy and beam 5; fp32, int8, a shortlist, both.
#
#   bench/decode.sh MODEL [OUT]      e.g. bench/decode.sh runs/m30k-base/model.nmt runs/bench-decode
#
# Environment: NMT_DATA (default ../shared/data/multi30k), REPEATS (3), THREADS (2, as OMP_NUM_THREADS),
# NEW (git revision to measure, default HEAD), OLD (a revision to compare with in the same run, e.g.
# OLD=HEAD~5; its rows are fp32 only, or every configuration with OLD_ROWS=all), OLD_MODEL (the model
# file for OLD when the weight names changed in between; default MODEL), K (shortlist entries per source
# piece, 50).
#
# Each revision runs from its own `git archive` copy (PYTHONPATH, python -P), so uncommitted changes in
# the checkout never leak into the figures. Runs are interleaved (every configuration once per repeat)
# so that load from other processes falls on all of them alike; medians are reported.
# Whole process: 1000 / wall clock from /usr/bin/time -v (interpreter start, imports, model load,
# subword encoding, decoding). Decode only: 1000 / the `translated N lines in S s` line of translate.
# Peak RSS: "Maximum resident set size" of /usr/bin/time -v. BLEU and chrF: nmt evaluate (sacrebleu).
set -euo pipefail

MODEL=$(realpath "${1:?usage: bench/decode.sh MODEL [OUT]}")
OUT=$(realpath -m "${2:-runs/bench-decode}")
DATA=$(realpath "${NMT_DATA:-../shared/data/multi30k}")
REPEATS=${REPEATS:-3}
K=${K:-50}
export OMP_NUM_THREADS=${THREADS:-2}
# translate sets this itself since e80de7e; older revisions need it here to be compared fairly (on shared
# cores, spinning OpenMP threads slow 2-thread decoding down: docs/performance.md)
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY="$ROOT/.venv/bin/python"
SRC="$DATA/test_2016_flickr.de"
REF="$DATA/test_2016_flickr.en"
mkdir -p "$OUT"

checkout() {  # checkout REV DIR: the package as committed at REV
    rm -rf "$2" && mkdir -p "$2"
    git -C "$ROOT" archive "$1" nmt_cli | tar -x -C "$2"
}

checkout "${NEW:-HEAD}" "$OUT/src-new"
git -C "$ROOT" rev-parse --short "${NEW:-HEAD}" > "$OUT/rev-new"
if [ -n "${OLD:-}" ]; then
    checkout "$OLD" "$OUT/src-old"
    git -C "$ROOT" rev-parse --short "$OLD" > "$OUT/rev-old"
fi

nmt() {  # nmt VERSION ARGS...: the command line of that revision
    local version=$1
    shift
    PYTHONPATH="$OUT/src-$version" "$PY" -P -m nmt_cli "$@"
}

if [ ! -f "$OUT/model.sl.nmt" ]; then  # a copy of the model carrying its shortlist table
    nmt new shortlist -m "$MODEL" --src "$DATA/train.de" --tgt "$DATA/train.en" -k "$K" \
        -o "$OUT/model.sl.nmt" 2> "$OUT/shortlist.log"
fi

# name  version  model  options
CONFIGS=(
    "greedy          new $MODEL -b 1"
    "beam5           new $MODEL -b 5"
    "greedy-int8     new $MODEL -b 1 --int8"
    "beam5-int8      new $MODEL -b 5 --int8"
    "greedy-sl       new $OUT/model.sl.nmt -b 1 --shortlist $K"
    "beam5-sl        new $OUT/model.sl.nmt -b 5 --shortlist $K"
    "greedy-int8-sl  new $OUT/model.sl.nmt -b 1 --int8 --shortlist $K"
    "beam5-int8-sl   new $OUT/model.sl.nmt -b 5 --int8 --shortlist $K"
)
if [ -n "${OLD:-}" ]; then
    OLD_MODEL=$(realpath "${OLD_MODEL:-$MODEL}")
    if [ "${OLD_ROWS:-fp32}" = all ]; then  # every configuration, each on OLD's copy of the model
        for config in "${CONFIGS[@]}"; do
            read -r name _ model options <<< "$config"
            [ "$model" = "$MODEL" ] && model=$OLD_MODEL
            CONFIGS+=("$name old $model $options")
        done
    else
        CONFIGS+=("greedy          old $OLD_MODEL -b 1" "beam5           old $OLD_MODEL -b 5")
    fi
fi

uptime > "$OUT/load.txt"
for repeat in $(seq "$REPEATS"); do
    for config in "${CONFIGS[@]}"; do
        read -r name version model options <<< "$config"
        tag="$name.$version.$repeat"
        # shellcheck disable=SC2086  # options are several words on purpose
        /usr/bin/time -v -o "$OUT/$tag.time" env PYTHONPATH="$OUT/src-$version" \
            "$PY" -P -m nmt_cli translate -m "$model" $options --batch-size 64 "$SRC" \
            > "$OUT/$name.$version.hyp" 2> "$OUT/$tag.err"
        echo "$tag: $(tail -n 1 "$OUT/$tag.err")" >&2
    done
done
uptime >> "$OUT/load.txt"

for config in "${CONFIGS[@]}"; do
    read -r name version _ <<< "$config"
    scores=$(nmt new evaluate -r "$REF" "$OUT/$name.$version.hyp" --metrics bleu,chrf --score-only)
    echo -e "$name\t$version\t$scores" >> "$OUT/scores.tsv.tmp"
done
mv "$OUT/scores.tsv.tmp" "$OUT/scores.tsv"

"$PY" "$ROOT/bench/decode_table.py" "$OUT" "$REPEATS" | tee "$OUT/table.md"

#!/usr/bin/env bash
# The large-corpus measurements of BENCHMARKS.md: Multi30k train repeated 150 times (4.35M pairs).
# Usage: bench/large_corpus.sh corpus                 writes $BIG/train.{de,en} (default /tmp/nmt-large)
#        bench/large_corpus.sh raw NAME SRC TGT SPM    `nmt train` from the text files (the form before stores)
#        bench/large_corpus.sh prepare NAME SRC TGT    `nmt prepare` into runs/large-NAME/prep
#        bench/large_corpus.sh store NAME              `nmt train --data runs/large-NAME/prep`
# Each run prints one line: wall, peak RSS and (training) the wall clock of the first update, read from
# log.jsonl (`nmt train` counts from its process start). NMT picks the code: e.g. for another checkout,
# NMT="env PYTHONPATH=/tmp/base .venv/bin/python -P -m nmt_cli". Note `uptime` beside the figures.
set -euo pipefail
D=${NMT_DATA:-/work/shared/data/multi30k}
BIG=${BIG:-/tmp/nmt-large}
NMT=${NMT:-.venv/bin/nmt}
STEPS=${STEPS:-100}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}  # idle threads sleep: the cores are shared
what=${1:?corpus, raw, prepare or store}

peak() { awk -F': ' '/Maximum resident/ {rss = $2} /Elapsed/ {wall = $2} END {printf "%.0f MB, wall %s", rss / 1024, wall}' "$1"; }
first() { .venv/bin/python -c 'import json,sys; r = next(r for r in map(json.loads, open(sys.argv[1])) if r["kind"] == "train"); print("first update at", r["wall"], "s")' "$1"; }

case $what in
corpus)
    mkdir -p "$BIG"
    for side in de en; do
        for _ in $(seq 150); do cat "$D/train.$side"; done > "$BIG/train.$side"
    done
    wc -l "$BIG"/train.de ;;
raw)
    name=${2:?}; out=runs/large-$name; mkdir -p "$out"
    /usr/bin/time -v -o "$out/train.time" $NMT train --preset base-rnn --src "${3:?}" --tgt "${4:?}" --spm "${5:?}" \
        --max-steps "$STEPS" --log-every 1 --valid-every 100000 --overwrite -o "$out" > "$out/train.out" 2> "$out/train.log"
    echo "$name: $(first "$out/log.jsonl"), peak $(peak "$out/train.time"), load $(uptime | sed "s/.*load/load/")" ;;
prepare)
    name=${2:?}; out=runs/large-$name; mkdir -p "$out"
    /usr/bin/time -v -o "$out/prepare.time" $NMT prepare --src "${3:?}" --tgt "${4:?}" --vocab-size 8000 \
        -o "$out/prep" > "$out/prepare.out" 2> "$out/prepare.log"
    echo "$name prepare: peak $(peak "$out/prepare.time"), load $(uptime | sed 's/.*load/load/')" ;;
store)
    name=${2:?}; out=runs/large-$name
    /usr/bin/time -v -o "$out/train.time" $NMT train --preset base-rnn --data "$out/prep" \
        --max-steps "$STEPS" --log-every 1 --valid-every 100000 --overwrite -o "$out/run" > "$out/train.out" 2> "$out/train.log"
    echo "$name: $(first "$out/run/log.jsonl"), peak $(peak "$out/train.time"), load $(uptime | sed 's/.*load/load/')" ;;
*) echo "unknown: $what" >&2; exit 2 ;;
esac

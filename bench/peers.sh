#!/usr/bin/env bash
# Same-run peer harness: nmt's base-rnn and OpenNMT-py 3.5.1's protocol model (../shared/BENCHMARKS-PEERS.md
# §5), trained one after the other on this machine for the same MINUTES each, then test_2016_flickr de->en
# decoded by both (greedy and beam 5, batch 64), with the best fp32 matmul rate measured before and after.
# Prints one table: each figure of both tools and their ratio (bench/peers_table.py).
#
#   bench/peers.sh [MINUTES] [OUT]        e.g. bench/peers.sh 15 runs/peers     (MINUTES default 15)
#
# Environment: NMT_DATA (Multi30k, default ../shared/data/multi30k), THREADS (OMP_NUM_THREADS, 2),
# REPEATS (decoding runs per configuration, interleaved, medians reported; 3), CURVE_EVERY (both tools keep
# a checkpoint every N updates, a multiple of ONMT_SAVE, and the table shows greedy test BLEU of each at
# equal updates; 100; 0: none),
# ONMT_SAVE (OpenNMT-py's checkpoint interval in updates, 25: it has no wall-clock stop, so it runs under
# `timeout` and its last saved checkpoint is scored, up to ONMT_SAVE updates before the end),
# ONMT_VENV (its virtual environment, built here once and reused: default runs/onmt-3.5.1),
# PYTHON (the interpreter for that venv, default python3.11 or python3),
# BEFORE (a commit of nmt trained and decoded beside this checkout in the same run, its own column in the
# table, e.g. BEFORE=86efaa4 for the figures a change started from; it runs from a `git archive` copy on
# this checkout's venv and trains from the raw text with --spm where it has no prepared store).
#
# OpenNMT-py pins torch<2.3, so its venv gets our torch first (the version .venv has), then opennmt-py
# without dependencies, then its runtime dependencies (BENCHMARKS-PEERS.md §5; pip warns about torch).
# Both train on pieces of one joint SentencePiece model (unigram 8k, coverage 1.0) made by `nmt prepare`,
# which also encodes nmt's store; OpenNMT-py's piece files are written beside it.
# Training throughput: real target tokens per second of the report windows starting 60 s or more into
# training, and over the whole process (/usr/bin/time). Decoding: whole process = 1000 / wall clock of
# /usr/bin/time; decode only = 1000 / each tool's own timer. Not part of `make test`.
set -euo pipefail

MINUTES=${1:-15}
OUT=$(realpath -m "${2:-runs/peers-$(date +%Y%m%d-%H%M%S)}")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DATA=$(realpath "${NMT_DATA:-$ROOT/../shared/data/multi30k}")
REPEATS=${REPEATS:-3}
CURVE_EVERY=${CURVE_EVERY:-100}
ONMT_SAVE=${ONMT_SAVE:-25}
ONMT_VENV=$(realpath -m "${ONMT_VENV:-$ROOT/runs/onmt-3.5.1}")
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
export OMP_NUM_THREADS=${THREADS:-2}
PY="$ROOT/.venv/bin/python"
NMT="$ROOT/.venv/bin/nmt"
OPY="$ONMT_VENV/bin/python"
for f in train.de train.en val.de val.en test_2016_flickr.de test_2016_flickr.en; do
    [ -f "$DATA/$f" ] || { echo "peers.sh: no $DATA/$f (set NMT_DATA)" >&2; exit 1; }
done
[ -x "$NMT" ] || { echo "peers.sh: no $NMT: run make install first" >&2; exit 1; }
if [ "$CURVE_EVERY" -gt 0 ] && [ $((CURVE_EVERY % ONMT_SAVE)) -ne 0 ]; then
    echo "peers.sh: CURVE_EVERY ($CURVE_EVERY) must be a multiple of ONMT_SAVE ($ONMT_SAVE)" >&2
    exit 1
fi
mkdir -p "$OUT/spm" "$OUT/nmt" "$OUT/onmt/data" "$OUT/decode"
log() { echo "peers.sh: $*" >&2; }

# nmt's columns: this checkout ("nmt"), and BEFORE's copy ("before") if asked for
tools=(nmt)
if [ -n "${BEFORE:-}" ]; then
    rm -rf "$OUT/before" && mkdir -p "$OUT/before/src"
    git -C "$ROOT" archive "$BEFORE" nmt_cli | tar -x -C "$OUT/before/src"
    git -C "$ROOT" rev-parse --short "$BEFORE" > "$OUT/before/commit"
    tools+=(before)
    PYTHONPATH="$OUT/before/src" "$PY" -P -c 'import nmt_cli; print(nmt_cli.__file__)' > "$OUT/before/where"
    grep -q "^$OUT/before/src/" "$OUT/before/where" || { log "BEFORE runs $(cat "$OUT/before/where")"; exit 1; }
fi
git -C "$ROOT" rev-parse --short HEAD > "$OUT/nmt/commit"
nmt_command() {  # TOOL: sets CMD to the command line that runs that nmt
    if [ "$1" = before ]; then
        CMD=(env "PYTHONPATH=$OUT/before/src" "$PY" -P -m nmt_cli)  # -P: not the nmt_cli in the cwd
    else
        CMD=("$NMT")
    fi
}

matmul() {  # matmul FILE: the best fp32 rates, torch.mm and oneDNN (GFLOP/s), as JSON
    "$PY" -c 'import json; from nmt_cli.benchmark import matmul_rate, onednn_rate
print(json.dumps({"mm": matmul_rate(), "onednn": onednn_rate()}))' > "$1"
}

# --- OpenNMT-py 3.5.1 in its own venv, torch pinned as ours -------------------------------------------
if [ ! -x "$ONMT_VENV/bin/onmt_train" ]; then
    log "building $ONMT_VENV"
    torch_version=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')
    began=$SECONDS
    rm -rf "$ONMT_VENV"
    "$PYTHON" -m venv "$ONMT_VENV"
    "$ONMT_VENV/bin/pip" install -q --upgrade pip
    "$ONMT_VENV/bin/pip" install -q "torch==$torch_version"
    "$ONMT_VENV/bin/pip" install -q --no-deps opennmt-py==3.5.1
    "$ONMT_VENV/bin/pip" install -q configargparse "ctranslate2<5" waitress "pyonmttok<2" fasttext-wheel \
        spacy flask pyahocorasick pyyaml rapidfuzz sacrebleu six tensorboard sentencepiece
    echo $((SECONDS - began)) > "$ONMT_VENV/setup-seconds"
fi
"$OPY" -c 'import onmt, torch; print(onmt.__version__, torch.__version__)' > "$OUT/onmt/versions" 2> /dev/null

uptime > "$OUT/load.txt"
matmul "$OUT/matmul.before.json"

# --- one joint SentencePiece model; both read the corpus as its pieces, encoded before the clock starts --
"$NMT" prepare --src "$DATA/train.de" --tgt "$DATA/train.en" --vocab-size 8000 -o "$OUT/spm" \
    > "$OUT/spm/prepare.txt" 2> "$OUT/spm/prepare.log"
"$OPY" - "$OUT/spm/spm.model" "$DATA" "$OUT/onmt/data" <<'PY'
import sys
import sentencepiece as spm
sp = spm.SentencePieceProcessor(model_file=sys.argv[1])
for split in ("train", "val", "test_2016_flickr"):
    for lang in ("de", "en"):
        with open(f"{sys.argv[2]}/{split}.{lang}", encoding="utf-8") as src, \
                open(f"{sys.argv[3]}/{split}.{lang}", "w", encoding="utf-8") as out:
            for line in src:
                out.write(" ".join(sp.encode(line.rstrip("\n"), out_type=str)) + "\n")
PY

# --- training, one after the other, MINUTES each from process start ----------------------------------
nmt_curve=()
if [ "$CURVE_EVERY" -gt 0 ]; then  # a step-N.nmt at each validation, on 100 dev lines to keep them short
    printf '[train]\nvalid_max_sentences = 100\n' > "$OUT/nmt/curve.toml"
    nmt_curve=(--config "$OUT/nmt/curve.toml" --valid-every "$CURVE_EVERY" --keep-last 100000)
fi
for tool in "${tools[@]}"; do
    nmt_command "$tool"
    corpus=(--data "$OUT/spm")
    if [ "$tool" = before ] && [ ! -f "$OUT/before/src/nmt_cli/store.py" ]; then
        corpus=(--src "$DATA/train.de" --tgt "$DATA/train.en" --spm "$OUT/spm/spm.model")
    fi
    mkdir -p "$OUT/$tool"
    log "nmt ($tool, $(cat "$OUT/$tool/commit")): training base-rnn for $MINUTES min"
    /usr/bin/time -v -o "$OUT/$tool/train.time" "${CMD[@]}" train --preset base-rnn "${corpus[@]}" \
        --dev-src "$DATA/val.de" --dev-tgt "$DATA/val.en" --time-budget "${MINUTES}m" --log-every 10 \
        "${nmt_curve[@]}" --overwrite -o "$OUT/$tool/run" > "$OUT/$tool/train.out" 2> "$OUT/$tool/train.log"
done

R="$OUT/onmt/run"
mkdir -p "$R"
cat > "$OUT/onmt/base-rnn.yaml" <<YAML
save_data: $R/data
src_vocab: $R/vocab.shared
tgt_vocab: $R/vocab.shared
share_vocab: true
src_vocab_size: 8100
tgt_vocab_size: 8100
overwrite: true
data:
  corpus_1: {path_src: $OUT/onmt/data/train.de, path_tgt: $OUT/onmt/data/train.en}
  valid:    {path_src: $OUT/onmt/data/val.de,   path_tgt: $OUT/onmt/data/val.en}
src_seq_length: 200
tgt_seq_length: 200
model_type: text
encoder_type: brnn
decoder_type: rnn
rnn_type: LSTM
enc_layers: 1
dec_layers: 1
word_vec_size: 256
enc_hid_size: 512
dec_hid_size: 512
global_attention: general
input_feed: 1
bridge: false
dropout: 0.3
attention_dropout: 0.0
param_init: 0.1
optim: adam
learning_rate: 0.001
max_grad_norm: 5
batch_type: tokens
batch_size: 3000
valid_batch_size: 64
accum_count: 1
seed: 1234
save_model: $R/model
log_file: $R/train.log
YAML
"$ONMT_VENV/bin/onmt_build_vocab" -config "$OUT/onmt/base-rnn.yaml" -n_sample -1 > "$OUT/onmt/vocab.out" 2>&1
log "OpenNMT-py: training the protocol model for $MINUTES min"
rc=0
/usr/bin/time -v -o "$OUT/onmt/train.time" timeout "$((MINUTES * 60))" "$ONMT_VENV/bin/onmt_train" \
    -config "$OUT/onmt/base-rnn.yaml" -train_steps 10000000 -valid_steps 10000000 -report_every 10 \
    -save_checkpoint_steps "$ONMT_SAVE" -keep_checkpoint -1 -num_workers 0 \
    > "$OUT/onmt/train.out" 2>&1 || rc=$?
[ "$rc" -eq 124 ] || { log "onmt_train ended with $rc before its budget: $OUT/onmt/train.out"; exit 1; }
onmt_last=$(find "$R" -name 'model_step_*.pt' | sed 's/.*model_step_\([0-9]*\)\.pt/\1/' | sort -n | tail -n 1)
[ -n "$onmt_last" ] || { log "OpenNMT-py saved no checkpoint in $MINUTES min (ONMT_SAVE=$ONMT_SAVE)"; exit 1; }
echo "$onmt_last" > "$OUT/onmt/last-step"
for ckpt in "$R"/model_step_*.pt; do  # keep the curve's and the last
    step=${ckpt##*_step_}; step=${step%.pt}
    if [ "$step" != "$onmt_last" ] && { [ "$CURVE_EVERY" -eq 0 ] || [ $((step % CURVE_EVERY)) -ne 0 ]; }; then
        rm -f "$ckpt"
    fi
done

# --- decoding: test_2016_flickr, batch 64, greedy and beam 5, interleaved ---------------------------
SRC="$DATA/test_2016_flickr.de"
REF="$DATA/test_2016_flickr.en"
export TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1  # onmt_translate loads its own (pickled) checkpoints
detok() {  # PIECES OUT: OpenNMT-py's output pieces joined into text by the shared SentencePiece model
    "$OPY" -c 'import sys, sentencepiece as spm
sp = spm.SentencePieceProcessor(model_file=sys.argv[1])
with open(sys.argv[2], encoding="utf-8") as f, open(sys.argv[3], "w", encoding="utf-8") as out:
    for line in f:
        out.write(sp.decode_pieces(line.split()) + "\n")' "$OUT/spm/spm.model" "$1" "$2"
}
log "decoding, $REPEATS rounds"
for repeat in $(seq "$REPEATS"); do
    for beam in 1 5; do
        for tool in "${tools[@]}"; do
            nmt_command "$tool"
            /usr/bin/time -v -o "$OUT/decode/$tool.b$beam.$repeat.time" \
                "${CMD[@]}" translate -m "$OUT/$tool/run/last.nmt" -b "$beam" --batch-size 64 "$SRC" \
                > "$OUT/decode/$tool.b$beam.hyp" 2> "$OUT/decode/$tool.b$beam.$repeat.err"
        done
        /usr/bin/time -v -o "$OUT/decode/onmt.b$beam.$repeat.time" \
            "$ONMT_VENV/bin/onmt_translate" -model "$R/model_step_$onmt_last.pt" \
            -src "$OUT/onmt/data/test_2016_flickr.de" -output "$OUT/decode/onmt.b$beam.pieces" \
            -beam_size "$beam" -batch_size 64 -batch_type sents -gpu -1 -report_time \
            > "$OUT/decode/onmt.b$beam.$repeat.err" 2>&1
    done
done
uptime >> "$OUT/load.txt"
matmul "$OUT/matmul.after.json"

# --- quality: BLEU and chrF of the last checkpoints; greedy BLEU at equal updates ------------------
score() {  # HYP -> "BLEU chrF"
    "$NMT" evaluate -r "$REF" "$1" --metrics bleu,chrf --score-only
}
for beam in 1 5; do
    detok "$OUT/decode/onmt.b$beam.pieces" "$OUT/decode/onmt.b$beam.hyp"
    for tool in "${tools[@]}"; do
        echo "$tool b$beam $(score "$OUT/decode/$tool.b$beam.hyp")" >> "$OUT/scores.txt.tmp"
    done
    echo "onmt b$beam $(score "$OUT/decode/onmt.b$beam.hyp")" >> "$OUT/scores.txt.tmp"
done
mv "$OUT/scores.txt.tmp" "$OUT/scores.txt"
if [ "$CURVE_EVERY" -gt 0 ]; then
    for ckpt in "$OUT"/nmt/run/step-*.nmt; do
        [ -e "$ckpt" ] || continue
        step=${ckpt##*/step-}; step=${step%.nmt}
        [ -f "$R/model_step_$step.pt" ] || continue
        "$NMT" translate -q -m "$ckpt" -b 1 --batch-size 64 "$SRC" > "$OUT/decode/curve.nmt.$step.hyp"
        nmt_bleu=$(score "$OUT/decode/curve.nmt.$step.hyp" | cut -f1)
        before_bleu=
        if [ -f "$OUT/before/run/step-$step.nmt" ]; then
            nmt_command before
            "${CMD[@]}" translate -q -m "$OUT/before/run/step-$step.nmt" -b 1 --batch-size 64 "$SRC" \
                > "$OUT/decode/curve.before.$step.hyp"
            before_bleu=$(score "$OUT/decode/curve.before.$step.hyp" | cut -f1)
        fi
        "$ONMT_VENV/bin/onmt_translate" -model "$R/model_step_$step.pt" -src "$OUT/onmt/data/test_2016_flickr.de" \
            -output "$OUT/decode/curve.onmt.$step.pieces" -beam_size 1 -batch_size 64 -batch_type sents -gpu -1 \
            > /dev/null 2>&1
        detok "$OUT/decode/curve.onmt.$step.pieces" "$OUT/decode/curve.onmt.$step.hyp"
        onmt_bleu=$(score "$OUT/decode/curve.onmt.$step.hyp" | cut -f1)
        echo "$step $nmt_bleu $onmt_bleu $before_bleu" >> "$OUT/curve.txt"
    done
fi

"$PY" "$ROOT/bench/peers_table.py" "$OUT" "$MINUTES" | tee "$OUT/table.md"

"""The prepared store: equal to encoding directly, refused when stale, same batches, same training."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from nmt_cli.config import SubwordConfig
from nmt_cli.data import check_corpus, collate, load_parallel, token_batches
from nmt_cli.errors import CheckpointError, ConfigError, InputError
from nmt_cli.prepare import PrepareOptions, prepare_corpus
from nmt_cli.store import build_store, open_store
from nmt_cli.subword import Subword, train_spm
from nmt_cli.train import fit
from tests.test_train import run_for, weights


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture()
def prepared(tmp_path, corpus, subword) -> Path:
    """The 1,500 training pairs with an empty source planted at line 3, encoded into a store."""
    src = Path(corpus.train_src).read_text(encoding="utf-8").splitlines()
    src[2] = ""
    src_path = write(tmp_path / "train.en", src)
    tgt_path = tmp_path / "train.de"
    tgt_path.write_bytes(Path(corpus.train_tgt).read_bytes())
    subword.save(tmp_path / "prep" / "spm.model")
    build_store(src_path, tgt_path, subword, tmp_path / "prep")
    return tmp_path / "prep"


def test_store_round_trip_equals_direct_encoding(prepared, subword):
    meta = json.loads((prepared / "store" / "store.json").read_text())
    direct, report = load_parallel(prepared.parent / "train.en", prepared.parent / "train.de", subword, 30)
    store, store_report = open_store(prepared, subword).select(30)
    assert meta["dtype"] == "uint16" and np.load(prepared / "store" / "src.npy").dtype == np.uint16
    assert (meta["lines"], meta["pairs"], meta["empty_lines"]) == (1500, 1499, [3])
    assert store_report._replace(src_unk=0, tgt_unk=0) == report._replace(src_unk=0, tgt_unk=0)
    assert report.skipped_long > 0  # the max_len cut is the run's, made when the store is opened
    assert len(store) == len(direct) and list(store) == direct  # ids and line numbers
    src_len, tgt_len = store.lengths()
    assert src_len.tolist() == [len(e.src) for e in direct]
    assert tgt_len.tolist() == [len(e.tgt) for e in direct]
    everything, _ = open_store(prepared).select(10_000)
    assert len(everything) == 1499 and everything[2].line == 4  # line 3 had an empty side


def test_stale_store_is_refused(prepared, subword, tmp_path):
    open_store(prepared, subword)  # fresh: accepted
    other = Subword.from_bytes(train_spm([prepared.parent / "train.de"], SubwordConfig(vocab_size=150)))
    with pytest.raises(ConfigError, match="differs from the store's"):
        open_store(prepared, other)
    spm = (prepared / "spm.model").read_bytes()
    other.save(prepared / "spm.model")
    with pytest.raises(CheckpointError, match="not the one the store was encoded with") as err:
        open_store(prepared)
    assert err.value.path == str(prepared / "spm.model")
    (prepared / "spm.model").write_bytes(spm)
    src = prepared.parent / "train.en"
    original = src.read_bytes()
    src.write_bytes(original.replace(b"\n", b" \n", 1))  # one character more on line 1
    with pytest.raises(InputError, match="changed since the store was prepared") as err:
        open_store(prepared, subword)
    assert err.value.path == str(src.resolve())
    src.write_bytes(original.replace(b"\n", b"!", 1))  # the same size: the digest tells
    with pytest.raises(InputError, match="changed since the store was prepared"):
        open_store(prepared, subword)
    src.write_bytes(original)  # the same bytes written again: a new modification time, the same digest
    assert len(open_store(prepared, subword)) == 1499
    ids = prepared / "store" / "tgt.npy"
    ids.write_bytes(ids.read_bytes()[:-2])
    with pytest.raises(InputError, match="expected"):
        open_store(prepared, subword)
    with pytest.raises(InputError, match="not a prepared corpus"):
        open_store(tmp_path)


def test_store_batches_equal_in_memory_batches(prepared, subword):
    direct, _ = load_parallel(prepared.parent / "train.en", prepared.parent / "train.de", subword, 30)
    store, _ = open_store(prepared, subword).select(30)
    for seed, epoch, rank, world in [(1, 0, 0, 1), (1234, 3, 0, 1), (7, 1, 1, 3), (7, 1, 2, 3)]:
        a = token_batches(direct, 400, seed, epoch, rank, world)
        b = token_batches(store, 400, seed, epoch, rank, world)
        assert [x.tolist() for x in a] == [x.tolist() for x in b]
    first = b[0]
    x, y = collate([direct[i] for i in first]), collate([store[i] for i in first])
    assert torch.equal(x.src, y.src) and torch.equal(x.tgt_out, y.tgt_out) and x.lines == y.lines


def test_resumed_run_from_a_store_equals_an_uninterrupted_one(tmp_path, corpus, subword):
    subword.save(tmp_path / "prep" / "spm.model")
    build_store(corpus.train_src, corpus.train_tgt, subword, tmp_path / "prep")
    data = replace(corpus, store=str(tmp_path / "prep"))
    straight = run_for(
        tmp_path, data, subword, "straight", max_steps=8, schedule="inverse-sqrt", warmup_steps=3
    )
    fit(straight, quiet=True)
    halves = straight._replace(
        out_dir=tmp_path / "halves", train_cfg=replace(straight.train_cfg, max_steps=4)
    )
    fit(halves, quiet=True)
    fit(halves._replace(train_cfg=straight.train_cfg), resume=True, quiet=True)
    a, b = weights(straight.out_dir / "last.nmt"), weights(halves.out_dir / "last.nmt")
    text = run_for(tmp_path, corpus, subword, "text", max_steps=8, schedule="inverse-sqrt", warmup_steps=3)
    fit(text, quiet=True)  # the same run from the text files
    c = weights(text.out_dir / "last.nmt")
    for name in a:
        assert torch.equal(a[name], b[name]), name
        assert torch.equal(a[name], c[name]), name


# corpus checks and --filter

SRC = [
    "ein Hund rennt",  # 1
    "zwei Katzen schlafen",  # 2
    "ein Hund rennt",  # 3 duplicate of 1
    "ja",  # 4 ratio: 1 word against 5
    "der Mann liest ein Buch",  # 5
    "zwei Katzen schlafen",  # 6 same source as 2, other target: not a duplicate
    "ein Hund rennt",  # 7 duplicate of 1
    "sehr sehr sehr sehr lange Zeile",  # 8 ratio: 6 words against 1
    "",  # 9 empty
    "ja",  # 10 duplicate of 4 (and over the ratio)
]
TGT = [
    "a dog runs",
    "two cats sleep",
    "a dog runs",
    "yes yes yes yes yes",
    "the man reads a book",
    "two cats are sleeping",
    "a dog runs",
    "long",
    "empty source",
    "yes yes yes yes yes",
]


def test_checks_and_filter_count_planted_duplicates_and_ratio_outliers(tmp_path):
    src, tgt = write(tmp_path / "c.de", SRC), write(tmp_path / "c.en", TGT)
    report = check_corpus(src, tgt)
    assert (report.duplicate, report.duplicate_lines) == (3, [3, 7, 10])
    assert (report.ratio, report.ratio_lines) == (3, [4, 8, 10])
    assert (report.empty, report.empty_lines, report.flagged) == (1, [9], 6)
    assert "duplicate pairs: 3 (lines 3, 7, 10)" in report.as_text()
    out = tmp_path / "prep"
    opts = PrepareOptions(filter=True)
    result = prepare_corpus(src, tgt, out, SubwordConfig(vocab_size=20, model_type="word"), opts)
    kept = [1, 2, 5, 6]
    assert (out / "c.filtered.de").read_text().splitlines() == [SRC[n - 1] for n in kept]
    assert (out / "c.filtered.en").read_text().splitlines() == [TGT[n - 1] for n in kept]
    assert result["filtered"]["kept"] == 4 and result["store"]["pairs"] == 4
    assert json.loads((out / "prepare.json").read_text())["corpus"]["duplicate"] == 3
    assert len(open_store(out)) == 4  # the store was made from the filtered files
    assert check_corpus(out / "c.filtered.de", out / "c.filtered.en").flagged == 0


def test_corpus_checks_stream_and_name_the_shorter_file(tmp_path):
    src, tgt = write(tmp_path / "c.de", ["a", "b", "c"]), write(tmp_path / "c.en", ["a", "b"])
    with pytest.raises(InputError, match="has 3 lines but .* has 2") as err:
        check_corpus(src, tgt)
    assert (err.value.path, err.value.line) == (str(tgt), 3)
    with pytest.raises(InputError, match="has 3 lines but .* has 2"):
        build_store(
            src,
            tgt,
            Subword.from_bytes(train_spm([src], SubwordConfig(vocab_size=8, model_type="char"))),
            tmp_path / "p",
        )
    assert not (tmp_path / "p" / "store" / "store.json").exists()  # no store from a bad corpus


def test_cli_trains_from_a_prepared_folder_and_refuses_it_stale(tmp_path, corpus):
    from tests.test_cli import invoke

    src, tgt = tmp_path / "c.en", tmp_path / "c.de"
    src.write_bytes(Path(corpus.train_src).read_bytes())
    tgt.write_bytes(Path(corpus.train_tgt).read_bytes())
    prep = invoke("prepare", "--src", src, "--tgt", tgt, "--vocab-size", 200, "-o", tmp_path / "prep")
    assert prep.exit_code == 0, prep.stderr
    assert "store\t" in prep.stdout and "1500 pairs" in prep.stdout
    args = ["train", "--preset", "tiny", "--data", tmp_path / "prep", "--max-steps", 2, "-q"]
    run = invoke(*args, "-o", tmp_path / "run")
    assert run.exit_code == 0, run.stderr
    assert (tmp_path / "run" / "spm.model").read_bytes() == (tmp_path / "prep" / "spm.model").read_bytes()
    both = invoke(*args, "--src", src, "-o", tmp_path / "run2")
    assert both.exit_code == 1 and "give --data or --src and --tgt, not both" in both.stderr
    with open(tgt, "ab") as f:
        f.write(b"one more line\n")
    src.write_text(src.read_text() + "noch eine Zeile\n")
    stale = invoke(*args, "-o", tmp_path / "run3")
    assert stale.exit_code == 1
    assert stale.stderr.strip().splitlines() == [
        f"nmt: error: {src.resolve()}: changed since the store was prepared from it; run `nmt prepare` again"
    ]

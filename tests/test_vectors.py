"""Word vectors: the text format, matching to pieces, coverage, and the rows a run starts from."""

import gzip
import json
from dataclasses import replace

import pytest
import torch
from conftest import DATA, tiny_model_config
from typer.testing import CliRunner

from nmt_cli.checkpoint import load_model
from nmt_cli.cli import app
from nmt_cli.config import SubwordConfig, TrainConfig
from nmt_cli.data import load_parallel
from nmt_cli.errors import ConfigError, InputError
from nmt_cli.model import build_model
from nmt_cli.run_files import record_vectors
from nmt_cli.subword import Subword, train_spm
from nmt_cli.textio import read_jsonl
from nmt_cli.train import Run, fit, load_vectors
from nmt_cli.vectors import coverage, read_vectors

PIECES = ["<pad>", "<unk>", "<s>", "</s>", "▁the", "▁dog", "s", "▁cat", "▁"]
# '▁dog' is in the file itself and as 'dog': the identical token wins; 'the' serves '▁the';
# 's' is identical; '▁cat' and '▁' find nothing; the second 'the' is read (and counted) but ignored
FILE = "5 3\nthe 1 2 3\ndog 9 9 9\n▁dog 4 5 6\ns 0.5 -2.5e-1 7\nthe 8 8 8\n"
VECTOR_FILE = DATA / "vectors.en.txt"


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_pieces_take_identical_tokens_first_then_the_word_without_its_marker(tmp_path):
    found = read_vectors(write(tmp_path / "v.txt", FILE), PIECES, 3)
    assert found.ids == [4, 5, 6]
    assert found.vectors.tolist() == [[1, 2, 3], [4, 5, 6], [0.5, -0.25, 7]]
    assert (found.exact, found.stripped, found.read) == (2, 1, 5)


def test_gzip_and_no_header_and_trailing_spaces_read_the_same(tmp_path):
    lines = FILE.split("\n", 1)[1].replace("\n", " \n")  # no header; word2vec's trailing space
    with gzip.open(tmp_path / "v.gz", "wt", encoding="utf-8") as f:
        f.write(lines)
    plain = read_vectors(write(tmp_path / "v.txt", FILE), PIECES, 3)
    zipped = read_vectors(tmp_path / "v.gz", PIECES, 3)
    assert zipped.ids == plain.ids and torch.equal(zipped.vectors, plain.vectors)


@pytest.mark.parametrize(
    "text, where, reason",
    [
        ("the 1 2 3\ndog 1 2\n", 2, "expected a token and 3 values, found 2 values"),
        ("the 1 2 3\ndog 1 x 3\n", 2, "not a number: 'x'"),
        ("2 3\nthe 1 2 3\ndog 1 2 3 4\n", 3, "expected a token and 3 values, found 4 values"),
        ("the 1 2 3\ndog 1 nan 3\n", 2, "values must be finite numbers"),
        ("3 3\nthe 1 2 3\n", 1, "header announces 3 vectors, the file has 1"),
        ("the 1 2 3\n\n", 2, "expected a token and 3 values, found 0 values"),
        ("the\n", 1, "expected a token and 3 values, found 0 values"),
    ],
)
def test_a_malformed_line_names_its_path_and_line(tmp_path, text, where, reason):
    path = write(tmp_path / "bad.txt", text)
    with pytest.raises(InputError) as e:
        read_vectors(path, PIECES, 3)
    assert str(e.value).startswith(f"{path}:{where}: {reason}")


def test_another_dimension_is_refused_at_the_first_line(tmp_path):
    path = write(tmp_path / "v.txt", "2 300\nthe 1\n")  # the second line is never read
    with pytest.raises(
        ConfigError, match="have 300 dimensions but the embeddings have 3: train with --emb-size"
    ):
        read_vectors(path, PIECES, 3)


def test_coverage_counts_pieces_tokens_and_the_uncovered_by_frequency():
    corpus = [[4, 5, 8], [4, 7, 7, 1]]  # ▁the ▁dog ▁ / ▁the ▁cat ▁cat <unk>
    cov = coverage([4, 5, 6], PIECES, corpus)
    assert (cov.pieces, cov.vocabulary, cov.tokens, cov.total_tokens) == (3, 5, 3, 7)
    assert cov.uncovered == [("▁cat", 2), ("▁", 1)]  # specials (<unk>) are never listed
    assert "3 of 5 pieces covered (60.0 %), 42.9 % of training tokens" in cov.as_text()


def test_data_vectors_give_the_coverage_documented_in_data_readme():
    # the joint subword model `nmt train` makes for data/ (8000 asked, shrunk to the corpus's 389)
    sub = Subword.from_bytes(
        train_spm([DATA / "train.en", DATA / "train.de"], SubwordConfig(), shrink_to_fit=True)
    )
    train, _ = load_parallel(DATA / "train.en", DATA / "train.de", sub, 100)
    pieces = sub.id_to_piece(range(sub.vocab_size))
    found = read_vectors(VECTOR_FILE, pieces, 16)
    cov = coverage(found.ids, pieces, [ex.src for ex in train])
    assert (found.read, cov.pieces, cov.vocabulary) == (234, 110, 385)
    assert (cov.tokens, cov.total_tokens) == (179_714, 384_244)  # 46.8 %


def file_vectors(path) -> dict[str, list[float]]:
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    return {line.split(" ")[0]: [float(v) for v in line.split(" ")[1:]] for line in lines}


def test_covered_rows_equal_the_files_vectors_at_step_0(tmp_path, corpus, subword):
    cfg = tiny_model_config(subword.vocab_size, emb_size=16)
    run = Run(corpus, subword, cfg, TrainConfig(src_vectors=str(VECTOR_FILE), max_steps=1), tmp_path)
    train, _ = load_parallel(corpus.train_src, corpus.train_tgt, subword, 100)
    torch.manual_seed(0)
    plain = build_model(cfg)
    torch.manual_seed(0)
    model = build_model(cfg)
    for side in load_vectors(model, run, train):
        record_vectors(tmp_path, *side, frozen=False)
    table, pieces = file_vectors(VECTOR_FILE), subword.id_to_piece(range(subword.vocab_size))
    src = model.encoder.embedding.weight
    covered = 0
    for i, piece in enumerate(pieces):
        vector = table.get(piece) or (table.get(piece[1:]) if piece.startswith("▁") else None)
        if i >= 4 and vector is not None:
            assert torch.equal(src[i], torch.tensor(vector)), piece
            covered += 1
        else:
            assert torch.equal(src[i], plain.encoder.embedding.weight[i]), piece
    assert covered > 20  # '▁the', '▁dog', '.' ... from a 200-piece vocabulary
    assert torch.equal(model.tgt_embedding.weight, plain.tgt_embedding.weight)  # no --tgt-vectors
    (record,) = [r for r in read_jsonl(tmp_path / "log.jsonl") if r["kind"] == "vectors"]
    assert record["side"] == "src" and record["pieces"] == covered and record["dim"] == 16
    assert record["path"] == str(VECTOR_FILE) and record["frozen"] is False


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def train_args(corpus, out, *extra):
    return (
        "train", "--src", corpus.train_src, "--tgt", corpus.train_tgt, "--preset", "tiny",
        "--emb-size", "16", "--vocab-size", "200", "-o", out, *extra,
    )  # fmt: skip


def test_cli_frozen_vectors_survive_training_and_resume_does_not_reread(tmp_path, corpus):
    out = tmp_path / "run"
    vectors = write(tmp_path / "v.txt", VECTOR_FILE.read_text(encoding="utf-8"))
    args = train_args(corpus, out, "--src-vectors", vectors, "--freeze-embeddings")
    result = invoke(*args, "--max-steps", 3)
    assert result.exit_code == 0, result.stderr
    stderr = " ".join(result.stderr.split())  # rich wraps long log lines
    assert "src vectors" in stderr and "pieces covered" in stderr and "most frequent uncovered" in stderr
    assert "pieces covered" not in result.stdout
    (record,) = [r for r in read_jsonl(out / "log.jsonl") if r["kind"] == "vectors"]
    assert record["side"] == "src" and record["frozen"] is True
    loaded = load_model(out / "last.nmt")
    assert json.loads(loaded.info["train_config"])["freeze_embeddings"] is True
    found = read_vectors(vectors, loaded.subword.id_to_piece(range(loaded.subword.vocab_size)), 16)
    assert torch.equal(loaded.model.encoder.embedding.weight[found.ids], found.vectors)  # frozen: unchanged
    write(vectors, "not a vector file\n")  # --resume restores the rows and must not read it again
    result = invoke(*args, "--max-steps", 5, "--resume")
    assert result.exit_code == 0, result.stderr
    resumed = load_model(out / "last.nmt").model
    assert torch.equal(resumed.encoder.embedding.weight, loaded.model.encoder.embedding.weight)
    assert not torch.equal(resumed.tgt_embedding.weight, loaded.model.tgt_embedding.weight)  # trained


def test_cli_malformed_vector_file_is_one_line_and_exit_1(tmp_path, corpus):
    bad = write(tmp_path / "bad.txt", "2 16\nthe " + "0.1 " * 16 + "\ndog 0.1 0.2\n")
    result = invoke(*train_args(corpus, tmp_path / "run", "--tgt-vectors", bad, "--max-steps", 1))
    assert result.exit_code == 1
    assert (
        result.stderr.splitlines()[-1]
        == f"nmt: error: {bad}:3: expected a token and 16 values, found 2 values"
    )
    assert "Traceback" not in result.stderr


def test_shared_embeddings_take_one_file_and_freezing_a_tied_one_is_refused(tmp_path, corpus, subword):
    cfg = tiny_model_config(subword.vocab_size, emb_size=16, share_embeddings=True)
    two = TrainConfig(src_vectors=str(VECTOR_FILE), tgt_vectors=str(tmp_path / "other.txt"), max_steps=1)
    with pytest.raises(ConfigError, match="shared embeddings take one vector file"):
        fit(Run(corpus, subword, cfg, two, tmp_path / "a"), quiet=True)
    tied = replace(cfg, share_embeddings=False, tie_embeddings=True, emb_size=128)
    frozen = TrainConfig(tgt_vectors=str(VECTOR_FILE), freeze_embeddings=True, max_steps=1)
    with pytest.raises(ConfigError, match="would freeze the output layer too"):
        fit(Run(corpus, subword, tied, frozen, tmp_path / "b"), quiet=True)


def test_one_file_serves_a_shared_embedding_and_counts_both_sides(tmp_path, corpus, subword):
    cfg = tiny_model_config(subword.vocab_size, emb_size=16, share_embeddings=True)
    run = Run(corpus, subword, cfg, TrainConfig(tgt_vectors=str(VECTOR_FILE), max_steps=1), tmp_path)
    train, report = load_parallel(corpus.train_src, corpus.train_tgt, subword, 100)
    model = build_model(cfg)
    ((side, path, _, cov),) = load_vectors(model, run, train)
    assert (side, path) == ("shared", str(VECTOR_FILE))
    assert cov.total_tokens == report.src_tokens + report.tgt_tokens
    assert model.encoder.embedding.weight is model.tgt_embedding.weight

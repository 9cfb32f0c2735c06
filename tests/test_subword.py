"""SentencePiece wrapper: fixed special ids, exact round trips, clear errors."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import sentencepiece as spm

from nmt_cli.config import SubwordConfig
from nmt_cli.errors import CheckpointError, ConfigError, InputError
from nmt_cli.subword import BOS, EOS, PAD, UNK, Subword, train_spm

EN = [
    "the cat sat on the mat",
    "a dog runs in the park",
    "the dog saw the cat",
    "two men are walking",
    "a woman reads a book",
    "children play in the water",
    "the man rides a bike",
    "a girl eats an apple",
]
DE = [
    "die Katze sitzt auf der Matte",
    "ein Hund rennt im Park",
    "der Hund sah die Katze",
    "zwei Männer gehen",
    "eine Frau liest ein Buch",
    "Kinder spielen im Wasser",
    "der Mann fährt Fahrrad",
    "ein Mädchen isst einen Apfel",
]
CFG = SubwordConfig(vocab_size=60, model_type="unigram")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("corpus")
    (root / "train.en").write_text("\n".join(EN) + "\n\n", encoding="utf-8")  # a trailing empty line
    (root / "train.de").write_text("\n".join(DE) + "\n", encoding="utf-8")
    return [root / "train.en", root / "train.de"]


@pytest.fixture(scope="module")
def model_bytes(corpus: list[Path]) -> bytes:
    return train_spm(corpus, CFG)


@pytest.fixture(scope="module")
def sw(model_bytes: bytes) -> Subword:
    return Subword.from_bytes(model_bytes)


def test_special_ids_are_0_to_3(sw: Subword) -> None:
    assert (PAD, UNK, BOS, EOS) == (0, 1, 2, 3)
    assert sw.id_to_piece([0, 1, 2, 3]) == ["<pad>", "<unk>", "<s>", "</s>"]
    assert sw.vocab_size == 60


def test_round_trip_of_seen_and_new_sentences(sw: Subword) -> None:
    for text in ["the cat sat on the mat", "ein Mädchen sah die Katze", "the water"]:
        ids = sw.encode(text)
        assert all(4 <= i < 60 for i in ids)  # no specials, no UNK: every character was seen
        assert sw.decode(ids) == text


def test_decode_ignores_pad_bos_eos(sw: Subword) -> None:
    ids = sw.encode("the dog")
    assert sw.decode([BOS, *ids, EOS, PAD, PAD]) == "the dog"


def test_pieces_agree_with_ids(sw: Subword) -> None:
    text = "die Katze sah den Hund"
    pieces = sw.pieces(text)
    assert pieces == sw.id_to_piece(sw.encode(text))
    assert "".join(pieces).replace("▁", " ").strip() == text
    assert sw.decode_pieces(pieces) == text


def test_encode_batch_equals_encode_one_by_one(sw: Subword) -> None:
    texts = ["the cat", "", "   ", "zwei Männer gehen im Park"]
    batch = sw.encode_batch(texts)
    assert batch == [sw.encode(t) for t in texts]
    assert batch[1] == [] and batch[2] == []


def test_unseen_character_becomes_unk_and_decodes(sw: Subword) -> None:
    ids = sw.encode("the € cat")
    assert ids.count(UNK) == 1
    assert sw.decode(ids) == "the ⁇ cat"


def test_bytes_and_file_round_trip(sw: Subword, model_bytes: bytes, tmp_path: Path) -> None:
    again = Subword.from_bytes(sw.to_bytes())
    assert sw.to_bytes() == model_bytes
    assert again.encode_batch(EN + DE) == sw.encode_batch(EN + DE)
    sw.save(tmp_path / "spm.model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spm.model"]  # no temporary file left
    assert Subword.from_file(tmp_path / "spm.model").encode("the cat") == sw.encode("the cat")


def test_training_is_deterministic(corpus: list[Path], model_bytes: bytes) -> None:
    assert train_spm(corpus, CFG) == model_bytes


def test_training_is_quiet(corpus: list[Path], capfd: pytest.CaptureFixture[str]) -> None:
    train_spm(corpus, SubwordConfig(vocab_size=70, model_type="bpe"))
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_vocab_too_large_names_the_maximum_that_works(corpus: list[Path]) -> None:
    with pytest.raises(ConfigError, match=r"vocab_size 1000 is too large .* the maximum is (\d+)") as info:
        train_spm(corpus, SubwordConfig(vocab_size=1000))
    maximum = int(str(info.value).rsplit(" ", 1)[1])
    assert Subword.from_bytes(train_spm(corpus, SubwordConfig(vocab_size=maximum))).vocab_size == maximum


def test_vocab_smaller_than_the_alphabet_is_a_config_error(corpus: list[Path]) -> None:
    # 32 distinct characters in EN + DE plus 4 special ids -> at least 36
    with pytest.raises(ConfigError, match="vocab_size 20 is too small: the corpus needs at least 36"):
        train_spm(corpus, SubwordConfig(vocab_size=20))


def test_max_sentences_takes_a_seeded_sample(tmp_path: Path) -> None:
    path = tmp_path / "letters.txt"
    path.write_text("".join(f"{c * 4}\n" for c in "abcdefghijklmnopqrstuvwxyz"), encoding="utf-8")
    cfg = SubwordConfig(vocab_size=40, model_type="char")
    # all lines: 4 special + '▁' + 26 letters = 31; three sampled lines: 4 + 1 + 3 = 8
    assert Subword.from_bytes(train_spm([path], cfg)).vocab_size == 31
    sample = train_spm([path], cfg, max_sentences=3)
    assert Subword.from_bytes(sample).vocab_size == 8
    assert train_spm([path], cfg, max_sentences=3) == sample  # the same three letters every time


def test_only_empty_lines_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "blank.txt"
    path.write_text("\n  \n\n", encoding="utf-8")
    with pytest.raises(InputError, match="no non-empty lines"):
        train_spm([path], CFG)


def test_invalid_utf8_names_path_and_line(corpus: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.de"
    bad.write_bytes(b"ein Hund\n\xff Katze\n")
    with pytest.raises(InputError) as info:
        train_spm([corpus[0], bad], CFG)
    assert str(info.value) == f"{bad}:2: invalid UTF-8 at byte 0"


def test_garbage_and_missing_model_files_name_the_path(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"this is not a protobuf \x00\xff")
    with pytest.raises(CheckpointError) as info:
        Subword.from_file(garbage)
    assert str(info.value) == f"{garbage}: not a SentencePiece model"
    (tmp_path / "empty.model").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.model: not a SentencePiece model"):
        Subword.from_file(tmp_path / "empty.model")
    with pytest.raises(InputError, match="missing.model: no such file"):
        Subword.from_file(tmp_path / "missing.model")


def test_model_with_other_special_ids_is_refused() -> None:
    # sentencepiece's defaults: unk=0, bos=1, eos=2, no pad
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(EN + DE), model_writer=writer, vocab_size=60, minloglevel=2, num_threads=1
    )
    with pytest.raises(CheckpointError, match=r"special ids pad, unk, bos, eos = \(-1, 0, 1, 2\)"):
        Subword.from_bytes(writer.getvalue(), "foreign.model")

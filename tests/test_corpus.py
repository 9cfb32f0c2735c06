"""The embedded corpus in data/: committed files, determinism, alignments and the grammar itself."""

import importlib.util
import os
import random
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

DATA = Path(__file__).resolve().parent.parent / "data"
SCRIPT = DATA / "generate.py"
LINE_COUNTS = {"train": 20_000, "dev": 500, "test": 500}
ALL_FILES = ["train.en", "train.de", "dev.en", "dev.de", "dev.align", "test.en", "test.de", "test.align"]


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("corpus_generate", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


def _lines(name: str) -> list[str]:
    return (DATA / name).read_text(encoding="utf-8").split("\n")[:-1]


def _run(*args: str, hash_seed: str = "0") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env)


def _german(sentence: object) -> str:
    return " ".join(gen.realize(sentence).de)


@pytest.mark.parametrize("split", LINE_COUNTS)
def test_files_have_stated_line_counts_and_are_line_aligned(split: str) -> None:
    names = [f"{split}.en", f"{split}.de"] + ([f"{split}.align"] if split != "train" else [])
    for name in names:
        assert (DATA / name).read_bytes().endswith(b"\n")
        assert len(_lines(name)) == LINE_COUNTS[split], name
    for en, de in zip(_lines(f"{split}.en"), _lines(f"{split}.de"), strict=True):
        assert en and de and en == en.lower() and "  " not in en + de
        assert en.endswith(" .") and de.endswith(" .")


def test_committed_files_are_up_to_date() -> None:
    result = _run("--check")
    assert result.returncode == 0, result.stderr


def test_generation_is_deterministic_across_processes(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    assert _run("--out", str(first), hash_seed="1").returncode == 0
    assert _run("--out", str(second), hash_seed="2").returncode == 0
    assert (
        sorted(p.name for p in first.iterdir())
        == sorted(p.name for p in second.iterdir())
        == sorted(ALL_FILES)
    )
    for name in ALL_FILES:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_check_names_the_stale_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {"dev.en": b"the dog sleeps .\n", "dev.de": b"der Hund schl\xc3\xa4ft .\n"}
    monkeypatch.setattr(gen, "build_corpus", lambda seed: files)  # a tiny corpus keeps this fast
    assert gen.main(["--out", str(tmp_path)]) == 0
    assert gen.main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "dev.de").write_text("der Hund läuft .\n", encoding="utf-8")
    capsys.readouterr()
    assert gen.main(["--check", "--out", str(tmp_path)]) == 1
    assert "dev.de" in capsys.readouterr().err
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files behind


def test_other_seed_gives_other_corpus() -> None:
    assert gen.generate_pairs(1, 50) != gen.generate_pairs(2, 50)


@pytest.mark.parametrize("split", ["dev", "test"])
def test_alignment_indices_are_in_range(split: str) -> None:
    for en, de, align in zip(
        _lines(f"{split}.en"), _lines(f"{split}.de"), _lines(f"{split}.align"), strict=True
    ):
        pairs = [tuple(map(int, link.split("-"))) for link in align.split()]
        assert pairs, en
        assert all(0 <= i < len(en.split()) and 0 <= j < len(de.split()) for i, j in pairs), en
        assert (len(en.split()) - 1, len(de.split()) - 1) in pairs  # "." ↔ "."


def test_dev_and_test_sentences_are_unseen() -> None:
    train = set(_lines("train.en"))
    assert len(train) == LINE_COUNTS["train"]
    dev, test = _lines("dev.en"), _lines("test.en")
    assert train.isdisjoint(dev) and train.isdisjoint(test) and set(dev).isdisjoint(test)
    assert len(set(dev)) == len(dev) and len(set(test)) == len(test)


def test_subordinate_clause_has_verb_final_order() -> None:
    main = gen.Clause(
        gen.NounPhrase("man"),
        "says",
        complement=gen.Clause(gen.NounPhrase("dog"), "sees", gen.NounPhrase("cat")),
    )
    pair = gen.realize(gen.Sentence(main))
    assert " ".join(pair.en) == "the man says that the dog sees the cat ."
    assert " ".join(pair.de) == "der Mann sagt , dass der Hund die Katze sieht ."
    # that↔dass and sees↔sieht across the reordering; the comma before dass (3) has no counterpart
    assert pair.alignment == ((0, 0), (1, 1), (2, 2), (3, 4), (4, 5), (5, 6), (6, 9), (7, 7), (8, 8), (9, 10))


def test_because_clause_puts_its_verb_last_and_fronting_inverts_the_main_clause() -> None:
    main = gen.Clause(gen.NounPhrase("man"), "sleeps")
    because = gen.Clause(gen.NounPhrase("dog"), "sees", gen.NounPhrase("cat"))
    after = gen.Sentence(main, "because", because)
    assert _german(after) == "der Mann schläft , weil der Hund die Katze sieht ."
    assert gen.realize(after).alignment[:4] == ((0, 0), (1, 1), (2, 2), (3, 3))  # "," ↔ ","
    fronted = gen.Sentence(main, "because", because, fronted=True)
    assert _german(fronted) == "weil der Hund die Katze sieht , schläft der Mann ."


def test_accusative_masculine_object_takes_den_and_weak_ending() -> None:
    clause = gen.Clause(gen.NounPhrase("cat", "small"), "sees", gen.NounPhrase("dog", "big"))
    assert _german(gen.Sentence(clause)) == "die kleine Katze sieht den großen Hund ."
    indefinite = gen.Clause(gen.NounPhrase("boy"), "sees", gen.NounPhrase("boy", "old", "a"))
    assert " ".join(gen.realize(gen.Sentence(indefinite)).en) == "the boy sees an old boy ."
    assert _german(gen.Sentence(indefinite)) == "der Junge sieht einen alten Jungen ."


def _dog_sleeps(preposition: str, noun: object) -> object:
    place = gen.PrepPhrase(preposition, noun)
    return gen.realize(gen.Sentence(gen.Clause(gen.NounPhrase("dog"), "sleeps", place=place)))


def test_prepositions_take_the_dative() -> None:
    def german(preposition: str, noun: object) -> str:
        return " ".join(_dog_sleeps(preposition, noun).de)

    assert german("under", gen.NounPhrase("table", "big")) == "der Hund schläft unter dem großen Tisch ."
    assert german("next to", gen.NounPhrase("lamp", "red")) == "der Hund schläft neben der roten Lampe ."
    assert german("with", gen.NounPhrase("cat", plural=True)) == "der Hund schläft mit den Katzen ."
    assert german("on", gen.NounPhrase("roof", "new", "a")) == "der Hund schläft auf einem neuen Dach ."


def test_in_the_contracts_to_im_and_aligns_both_words() -> None:
    pair = _dog_sleeps("in", gen.NounPhrase("house"))
    assert " ".join(pair.de) == "der Hund schläft im Haus ."
    assert pair.alignment == ((0, 0), (1, 1), (2, 2), (3, 3), (4, 3), (5, 4), (6, 5))  # in↔im, the↔im


def test_dative_verb_plural_subject_and_separable_verb() -> None:
    helps = gen.Clause(gen.NounPhrase("child", plural=True), "helps", gen.NounPhrase("horse", "old", "a"))
    assert _german(gen.Sentence(helps)) == "die Kinder helfen einem alten Pferd ."
    calls = gen.Clause(gen.NounPhrase("woman"), "calls", gen.NounPhrase("farmer"))
    assert _german(gen.Sentence(calls)) == "die Frau ruft den Bauern an ."
    after_although = gen.Sentence(gen.Clause(gen.NounPhrase("cat"), "sleeps"), "although", calls)
    assert _german(after_although) == "die Katze schläft , obwohl die Frau den Bauern anruft ."


def test_translation_is_a_function_of_the_english_sentence() -> None:
    rng = random.Random(0)
    german_for: dict[tuple[str, ...], tuple[str, ...]] = {}
    for _ in range(3000):
        pair = gen.realize(gen.sample_sentence(rng))
        assert german_for.setdefault(pair.en, pair.de) == pair.de

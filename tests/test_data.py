"""Examples, batches and corpus checks, on corpora small enough to count by hand."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from nmt_cli.config import SubwordConfig
from nmt_cli.data import (
    Example,
    check_corpus,
    collate,
    load_parallel,
    padding_fraction,
    sorted_chunks,
    token_batches,
)
from nmt_cli.errors import ConfigError, InputError
from nmt_cli.subword import UNK, Subword, train_spm

# A word-level model: one id per word, so subword lengths are word counts. "Maus" is left out of
# the vocabulary so that it becomes UNK.
WORDS = "ein Hund rennt im Park zwei Katzen der a dog runs nothing here two cats sleep the mouse blank source"
SRC = ["ein Hund rennt", "", "ein Hund rennt im Park", "zwei Katzen", "  ", "der Hund Maus", "zwei Katzen"]
TGT = ["a dog runs", "nothing here", "a dog", "two cats sleep here", "blank source", "the mouse", ""]


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def sw(tmp_path_factory: pytest.TempPathFactory) -> Subword:
    words = write(tmp_path_factory.mktemp("vocab") / "words.txt", [WORDS])
    cfg = SubwordConfig(vocab_size=len(WORDS.split()) + 4, model_type="word")  # every word + 4 specials
    return Subword.from_bytes(train_spm([words], cfg))


def synthetic(tgt_lengths: list[int], src_lengths: list[int] | None = None) -> list[Example]:
    """Examples whose ids do not matter, only their lengths."""
    src_lengths = src_lengths or tgt_lengths
    return [
        Example([5] * s, [6] * t, n)
        for n, (s, t) in enumerate(zip(src_lengths, tgt_lengths, strict=True), start=1)
    ]


# load_parallel


def test_load_parallel_keeps_and_counts(sw: Subword, tmp_path: Path) -> None:
    src, tgt = write(tmp_path / "c.de", SRC), write(tmp_path / "c.en", TGT)
    examples, report = load_parallel(src, tgt, sw, max_len=3)
    # 1 kept; 2 empty source; 3 source has 5 words; 4 target has 4 words; 5 blank source; 6 kept;
    # 7 empty target
    assert [e.line for e in examples] == [1, 6]
    assert examples[0] == Example(sw.encode("ein Hund rennt"), sw.encode("a dog runs"), 1)
    assert examples[1].src[2] == UNK  # "Maus" is not in the vocabulary
    assert report._asdict() == {
        "total": 7,
        "kept": 2,
        "skipped_empty": 3,
        "skipped_long": 2,
        "empty_lines": [2, 5, 7],
        "long_lines": [3, 4],
        "src_tokens": 6,  # 3 + 3
        "tgt_tokens": 5,  # 3 + 2
        "src_unk": 1,
        "tgt_unk": 0,
    }


def test_load_parallel_with_a_larger_max_len_keeps_long_pairs(sw: Subword, tmp_path: Path) -> None:
    src, tgt = write(tmp_path / "c.de", SRC), write(tmp_path / "c.en", TGT)
    examples, report = load_parallel(src, tgt, sw, max_len=5)
    assert [e.line for e in examples] == [1, 3, 4, 6]
    assert (report.skipped_empty, report.skipped_long) == (3, 0)


def test_examples_share_one_int_object_per_id(tmp_path: Path) -> None:
    # a corpus holds about a million ids: shared, each costs a list slot instead of a 28-byte int too
    class BigIds:  # a stand-in subword model whose ids lie past CPython's cached small ints
        vocab_size = 1000

        def encode_batch(self, texts: list[str]) -> list[list[int]]:
            return [[int(str(500 + len(word))) for word in text.split()] for text in texts]

    src, tgt = write(tmp_path / "c.de", ["a bb a", "bb"]), write(tmp_path / "c.en", ["ccc", "ccc a"])
    examples, _ = load_parallel(src, tgt, BigIds(), max_len=10)  # type: ignore[arg-type]
    assert [e.src for e in examples] == [[501, 502, 501], [502]]
    assert examples[0].src[0] is examples[0].src[2] and examples[0].src[1] is examples[1].src[0]
    assert examples[0].tgt[0] is examples[1].tgt[0]


def test_count_mismatch_names_both_files(sw: Subword, tmp_path: Path) -> None:
    src, tgt = write(tmp_path / "c.de", SRC), write(tmp_path / "c.en", TGT[:4])
    with pytest.raises(InputError) as info:
        load_parallel(src, tgt, sw, max_len=3)
    assert f"{src} has 7 lines but {tgt} has 4" in str(info.value)


def test_invalid_utf8_names_path_and_line(sw: Subword, tmp_path: Path) -> None:
    src = write(tmp_path / "c.de", ["ein Hund", "zwei Katzen"])
    tgt = tmp_path / "c.en"
    tgt.write_bytes(b"a dog\ntwo \xe9 cats\n")
    with pytest.raises(InputError) as info:
        load_parallel(src, tgt, sw, max_len=3)
    assert str(info.value) == f"{tgt}:2: invalid UTF-8 at byte 4"
    with pytest.raises(InputError, match=f"{tgt}:2: invalid UTF-8"):
        check_corpus(src, tgt)


def test_nothing_usable_is_an_error(sw: Subword, tmp_path: Path) -> None:
    src, tgt = write(tmp_path / "c.de", ["", "ein Hund rennt im Park"]), write(tmp_path / "c.en", ["a", "b"])
    with pytest.raises(InputError, match="no usable sentence pairs: 1 empty, 1 longer than 3 subwords"):
        load_parallel(src, tgt, sw, max_len=3)


# check_corpus


def test_check_corpus_counts(tmp_path: Path) -> None:
    src = write(tmp_path / "c.de", ["ein Hund", "", "Hallo Welt", "a b c d e f", "  ", ""])
    tgt = write(tmp_path / "c.en", ["a dog", "x", "Hallo Welt", "short", "", ""])
    report = check_corpus(src, tgt, long_words=5)
    assert (report.lines, report.src_empty, report.tgt_empty) == (6, 3, 2)
    assert (report.empty, report.empty_lines) == (3, [2, 5, 6])
    assert (report.identical, report.identical_lines) == (1, [3])  # two empty lines are not a copy
    assert (report.long, report.long_lines) == (1, [4])  # 6 words > 5
    assert (report.max_src_words, report.max_tgt_words) == (6, 2)
    assert (report.ratio, report.ratio_lines, report.duplicate, report.flagged) == (1, [4], 0, 5)
    assert json.loads(json.dumps(report._asdict())) == report._asdict()  # plain types only
    assert report.as_text().splitlines() == [
        f"{src} / {tgt}: 6 line pairs",
        "  empty: 3 source, 2 target (lines 2, 5, 6)",
        "  identical source and target: 1 (lines 3)",
        "  longer than 5 words: 1 (lines 4)",
        "  length ratio over 3: 1 (lines 4)",  # 6 words against 1
        "  duplicate pairs: 0",
        "  longest: 6 source words, 2 target words",
    ]


def test_check_corpus_lists_only_the_first_lines(tmp_path: Path) -> None:
    src = write(tmp_path / "c.de", ["same"] * 7)
    report = check_corpus(src, write(tmp_path / "c.en", ["same"] * 7))
    assert (report.identical, report.identical_lines) == (7, [1, 2, 3, 4, 5])
    assert "identical source and target: 7 (lines 1, 2, 3, 4, 5, ...)" in report.as_text()


# collate


def test_collate_gives_exact_tensors() -> None:
    batch = collate([Example([5, 6], [7], line=1), Example([8, 9, 10], [11, 12], line=2)])
    # the longer source (line 2) comes first; BOS=2, EOS=3, PAD=0
    assert batch.src.tolist() == [[8, 9, 10], [5, 6, 0]]
    assert batch.src_lengths.tolist() == [3, 2]
    assert batch.tgt_in.tolist() == [[2, 11, 12], [2, 7, 0]]
    assert batch.tgt_out.tolist() == [[11, 12, 3], [7, 3, 0]]
    assert batch.n_tokens == 5  # (2 + 1) + (1 + 1)
    assert batch.lines == [2, 1]
    assert {t.dtype for t in (batch.src, batch.src_lengths, batch.tgt_in, batch.tgt_out)} == {torch.long}
    torch.nn.utils.rnn.pack_padded_sequence(
        batch.src, batch.src_lengths, batch_first=True, enforce_sorted=True
    )


def test_collate_keeps_the_order_of_equal_lengths() -> None:
    batch = collate([Example([4], [4], 7), Example([5, 5], [5], 3), Example([6], [6, 6], 9)])
    assert batch.lines == [3, 7, 9]
    assert batch.src.tolist() == [[5, 5], [4, 0], [6, 0]]


# token_batches


def lists(batches: list) -> list[list[int]]:
    """token_batches gives index arrays; lists compare as a whole."""
    return [b.tolist() for b in batches]


def test_equal_lengths_fill_the_budget_exactly() -> None:
    # target length 9 -> 10 label positions each, so 100 tokens hold 10 sentences
    batches = token_batches(synthetic([9] * 30), batch_tokens=100, seed=1, epoch=0)
    assert [len(b) for b in batches] == [10, 10, 10]


def test_short_and_long_pairs_are_batched_apart() -> None:
    # sorted by length: (1, 1) fit 2 * 2 = 4 <= 20; adding a 9 would need 10 * 3 = 30 > 20
    batches = token_batches(synthetic([9, 1, 9, 1]), batch_tokens=20, seed=1, epoch=0)
    assert sorted(sorted(b) for b in batches) == [[0, 2], [1, 3]]


def test_every_index_once_and_within_budget() -> None:
    rng = random.Random(0)
    examples = synthetic([rng.randint(1, 40) for _ in range(500)], [rng.randint(1, 40) for _ in range(500)])
    batches = token_batches(examples, batch_tokens=200, seed=3, epoch=2)
    assert sorted(i for b in batches for i in b) == list(range(500))
    for b in batches:
        assert (max(len(examples[i].tgt) for i in b) + 1) * len(b) <= 200
        assert max(len(examples[i].src) for i in b) * len(b) <= 200


def test_the_longer_side_counts_against_the_budget() -> None:
    # sources of 9 pieces, targets of 1 (2 label positions): 11 rows take 99 of 100 source positions
    batches = token_batches(synthetic([1] * 30, [9] * 30), batch_tokens=100, seed=1, epoch=0)
    assert sorted(len(b) for b in batches) == [8, 11, 11]


def test_long_sources_of_neighbouring_target_lengths_share_a_batch() -> None:
    # target length 1: sources 1, 1, 6 (ascending); target length 2: sources 6, 1, 1 (descending), so
    # the two 6-piece sources meet in the middle; sorted the same way in both groups, each would be
    # batched with a 1-piece source and padded to 6
    examples = synthetic([1, 1, 1, 2, 2, 2], [1, 1, 6, 6, 1, 1])
    batches = token_batches(examples, batch_tokens=12, seed=1, epoch=0)
    assert sorted(sorted(b) for b in batches) == [[0, 1], [2, 3], [4, 5]]


def test_a_pair_over_the_budget_gets_a_batch_of_its_own() -> None:
    batches = token_batches(synthetic([2, 50, 2]), batch_tokens=10, seed=1, epoch=0)
    assert sorted(sorted(b) for b in batches) == [[0, 2], [1]]


def test_same_arguments_same_batches_other_epoch_other_batches() -> None:
    examples = synthetic([1] * 8)  # budget 4 -> four pairs of sentences
    epoch0 = lists(token_batches(examples, batch_tokens=4, seed=7, epoch=0))
    assert epoch0 == lists(token_batches(examples, batch_tokens=4, seed=7, epoch=0))
    epoch1 = lists(token_batches(examples, batch_tokens=4, seed=7, epoch=1))
    assert {frozenset(b) for b in epoch0} != {frozenset(b) for b in epoch1}  # new pairings, not only order
    assert lists(token_batches(examples, batch_tokens=4, seed=8, epoch=0)) != epoch0


def test_token_batches_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    token_batches(synthetic([3, 1, 2] * 10), batch_tokens=8, seed=1, epoch=0)
    assert torch.equal(torch.rand(1), expected)


def test_two_ranks_split_an_even_number_of_batches() -> None:
    examples = synthetic([1] * 8)  # four batches of two
    both = lists(token_batches(examples, batch_tokens=4, seed=5, epoch=0))
    rank0 = lists(token_batches(examples, batch_tokens=4, seed=5, epoch=0, rank=0, world_size=2))
    rank1 = lists(token_batches(examples, batch_tokens=4, seed=5, epoch=0, rank=1, world_size=2))
    assert (rank0, rank1) == (both[0::2], both[1::2])
    assert not {i for b in rank0 for i in b} & {i for b in rank1 for i in b}


def test_an_odd_number_of_batches_wraps_around() -> None:
    examples = synthetic([1] * 10)  # five batches b0..b4; two ranks get b0 b2 b4 and b1 b3 b0
    both = lists(token_batches(examples, batch_tokens=4, seed=5, epoch=0))
    rank0 = lists(token_batches(examples, batch_tokens=4, seed=5, epoch=0, rank=0, world_size=2))
    rank1 = lists(token_batches(examples, batch_tokens=4, seed=5, epoch=0, rank=1, world_size=2))
    assert rank0 == [both[0], both[2], both[4]]
    assert rank1 == [both[1], both[3], both[0]]
    one = lists(token_batches(synthetic([1]), batch_tokens=4, seed=5, epoch=0, rank=2, world_size=3))
    assert one == [[0]]  # fewer batches than ranks: every rank still gets one


def test_bad_rank_or_budget_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="rank must be in"):
        token_batches(synthetic([1]), batch_tokens=4, seed=1, epoch=0, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="batch_tokens must be at least 1"):
        token_batches(synthetic([1]), batch_tokens=0, seed=1, epoch=0)
    assert token_batches([], batch_tokens=4, seed=1, epoch=0) == []


def test_padding_fraction_by_hand() -> None:
    # one batch of targets with 1 and 3 subwords: 2 * (3 + 1) = 8 label positions, 2 + 4 = 6 real
    assert padding_fraction([[0, 1]], synthetic([1, 3])) == pytest.approx(0.25)
    assert padding_fraction([], synthetic([1])) == 0.0


def test_padding_stays_below_5_percent_on_multi30k_like_lengths() -> None:
    rng = random.Random(0)  # target lengths around 13 +- 5 subwords, like Multi30k
    tgt = [max(1, round(rng.gauss(13, 5))) for _ in range(5000)]
    src = [max(1, t + rng.randint(-3, 3)) for t in tgt]
    examples = synthetic(tgt, src)
    batches = token_batches(examples, batch_tokens=3000, seed=1, epoch=0)
    assert padding_fraction(batches, examples) < 0.05
    unsorted = [list(range(i, min(i + 200, 5000))) for i in range(0, 5000, 200)]
    assert padding_fraction(unsorted, examples) > 0.3  # what bucketing saves


# sorted_chunks


def test_sorted_chunks_longest_first_and_order_restorable() -> None:
    lengths = [3, 1, 4, 1, 5]
    chunks = sorted_chunks(lengths, batch_size=2)
    assert chunks == [[4, 2], [0, 1], [3]]  # 5 4 | 3 1 | 1, ties in input order
    restored = [""] * len(lengths)
    for chunk in chunks:
        for i in chunk:
            restored[i] = f"len{lengths[i]}"
    assert restored == ["len3", "len1", "len4", "len1", "len5"]
    assert sorted_chunks([], batch_size=2) == []
    with pytest.raises(ConfigError):
        sorted_chunks(lengths, batch_size=0)


@pytest.mark.parametrize("longest", [5, 400, 10**6])  # 16-bit radix keys, unique 64-bit keys, lexsort
def test_length_order_is_a_stable_sort_by_target_then_snaking_source(longest: int) -> None:
    from nmt_cli.data import _length_order

    rng = np.random.default_rng(longest)
    src, tgt = rng.integers(1, longest, 2000), rng.integers(0, longest, 2000)
    tie_break = rng.permutation(2000)
    expected = sorted(tie_break.tolist(), key=lambda i: (tgt[i], src[i] * (1 if tgt[i] % 2 else -1)))
    assert _length_order(src, tgt, tie_break).tolist() == expected

"""The lexical table, worked out by hand, and the per-batch shortlist built from it."""

from __future__ import annotations

import pytest
import torch

from nmt_cli.shortlist import (
    LexicalTable,
    RowLists,
    batch_shortlist,
    build_table,
    own_log_probs,
    sentence_vocab,
)

# sentence counts: c(10) = 2, c(11) = c(12) = 1; c(20) = 2, c(21) = c(22) = 1. Dice 2 c(s,t) / (c(s) + c(t)):
#   10: 20 -> 2*2/4 = 1,   21 -> 2/3,  22 -> 2/3     11: 21 -> 2/2 = 1, 20 -> 2/3     12: 22 -> 1, 20 -> 2/3
# so with k = 2: 10 -> [20, 21] (a tie at 2/3: the lower id first), 11 -> [21, 20], 12 -> [22, 20].
# The special ids (here 3 = EOS) are never in the table: every shortlist has them anyway.
SRC = [[10, 11], [10, 12, 10]]
TGT = [[20, 21, 3], [20, 22, 22]]


def test_the_table_ranks_by_dice():
    lex = build_table(SRC, TGT, vocab_size=30, k=2, frequent=2)
    assert lex.table[10].tolist() == [20, 21]
    assert lex.table[11].tolist() == [21, 20]
    assert lex.table[12].tolist() == [22, 20]
    assert lex.table[13].tolist() == [-1, -1]  # never seen
    assert lex.frequent.tolist() == [20, 22]  # each occurs twice (EOS is special): a tie, lower id first


def test_round_trip_through_model_file_tensors():
    lex = build_table(SRC, TGT, vocab_size=30, k=2, frequent=1)
    back = LexicalTable.from_tensors(lex.to_tensors())
    assert torch.equal(back.table, lex.table) and torch.equal(back.frequent, lex.frequent)
    assert LexicalTable.from_tensors({}) is None


def test_sentence_and_batch_shortlists():
    lex = build_table(SRC, TGT, vocab_size=30, k=2, frequent=0)
    assert sentence_vocab([11], lex, k=1).tolist() == [0, 1, 2, 3, 21]
    assert sentence_vocab([12, 11], lex, k=2).tolist() == [0, 1, 2, 3, 20, 21, 22]
    columns = batch_shortlist([[11], [12]], lex, k=1)
    assert columns.vocab.tolist() == [0, 1, 2, 3, 21, 22]
    assert columns.allowed.tolist() == [[True] * 4 + [True, False], [True] * 4 + [False, True]]


def test_own_log_probs_condition_each_row_on_its_own_list():
    # columns 0..3 are the special ids, in every list; row 1's list leaves out its largest logit, and
    # what is left would underflow in a plain exp: logsumexp's stable form
    logits = torch.tensor(
        [[-1.0, -2.0, -3.0, -4.0, 0.5, 2.0, -1.5], [-300.0, -200.0, -310.0, -250.0, 80.0, -220.0, -205.0]]
    )
    allowed = torch.tensor([[True] * 4 + [True, False, False], [True] * 4 + [False, True, True]])
    lists = RowLists.of(allowed)
    assert lists.columns.tolist() == [[0, 1, 2, 3, 4, 0], [0, 1, 2, 3, 5, 6]]
    own = own_log_probs(logits.clone(), lists)
    for row in range(2):
        n = int(allowed[row].sum())
        expected = logits[row][allowed[row]] - logits[row][allowed[row]].logsumexp(0)
        assert torch.allclose(own[row, :n], expected)
        assert torch.all(own[row, n:] == float("-inf"))  # row 0's list is a column shorter: padding


def test_own_log_probs_of_a_row_do_not_depend_on_the_other_columns():
    # a sentence alone (its list is all the columns) and beside another (a wider union): the same bits
    torch.manual_seed(0)
    logits = torch.randn(1, 9) * 5
    mine = torch.tensor([0, 1, 2, 3, 5, 8])
    alone = own_log_probs(logits[:, mine].clone(), RowLists.of(torch.ones(1, 6, dtype=torch.bool)))
    allowed = torch.zeros(2, 9, dtype=torch.bool)
    allowed[0, mine] = True
    allowed[1] = True
    beside = own_log_probs(logits.repeat(2, 1), RowLists.of(allowed))
    assert torch.equal(beside[0, :6], alone[0])  # row 0 is padded to row 1's nine columns


def test_row_lists_hold_the_special_ids():
    with pytest.raises(AssertionError, match="special ids"):
        RowLists.of(torch.tensor([[True, True, False, True, True]]))

"""metrics: scores and signatures as sacrebleu gives them, input checks naming files, paired tests."""

from __future__ import annotations

import math
import os

import pytest
import sacrebleu

from nmt_cli.errors import ConfigError, InputError
from nmt_cli.metrics import (
    check_inputs,
    corpus_scores,
    sentence_scores,
    significance,
    warnings_for,
)

REFS = [
    [
        "the cat sat on the mat",
        "a dog barked at the postman",
        "it is raining in the city",
        "he reads a book every night",
        "she drinks coffee in the morning",
        "the children play in the park",
    ]
]
BASE = [
    "the cat sat on a mat",
    "a dog barked at a man",
    "it rains in town",
    "he reads book every night",
    "she drinks tea in the morning",
    "children are playing in a park",
]
# better than BASE on three lines, the same on three: close enough that the tests are not trivial
CLOSE = [
    "the cat sat on the mat",
    "a dog barked at a man",
    "it rains in the town",
    "he reads book every night",
    "she drinks a tea in the morning",
    "children are playing in a park",
]


def by_name(results):
    return {r.name: r for r in results}


def test_identical_hypotheses_score_perfectly():
    results = by_name(corpus_scores(REFS[0], REFS, ("bleu", "chrf", "chrf++", "ter")))
    assert list(results) == ["BLEU", "chrF", "chrF++", "TER"]
    assert results["BLEU"].score == pytest.approx(100.0)
    assert results["BLEU"].precisions == pytest.approx((100.0,) * 4)
    assert (results["BLEU"].bp, results["BLEU"].ratio) == (1.0, 1.0)
    assert results["chrF"].score == pytest.approx(100.0)
    assert results["chrF++"].score == pytest.approx(100.0)
    assert results["TER"].score == 0.0


def test_bleu_by_hand():
    # hyp "the cat sat on the mat", ref "the cat sat on a mat", both 6 tokens so BP = 1
    # matches: 1-grams 5/6 ("the" clipped to 1), 2-grams 3/5, 3-grams 2/4, 4-grams 1/3
    # BLEU = (5/6 * 3/5 * 2/4 * 1/3) ** (1/4) = (1/12) ** 0.25 = 0.5373
    [bleu] = corpus_scores(["the cat sat on the mat"], [["the cat sat on a mat"]], ["bleu"])
    assert bleu.score == pytest.approx(100 * (1 / 12) ** 0.25)
    assert bleu.precisions == pytest.approx((500 / 6, 60.0, 50.0, 100 / 3))
    assert (bleu.sys_len, bleu.ref_len) == (6, 6)
    assert bleu.text == "BLEU = 53.73 83.3/60.0/50.0/33.3 (BP = 1.000 ratio = 1.000 hyp_len = 6 ref_len = 6)"


def test_scores_equal_sacrebleus_corpus_functions():
    results = by_name(corpus_scores(BASE, REFS, ("bleu", "chrf", "chrf++", "ter")))
    assert results["BLEU"].score == sacrebleu.corpus_bleu(BASE, REFS).score
    assert results["chrF"].score == sacrebleu.corpus_chrf(BASE, REFS).score
    assert results["chrF++"].score == sacrebleu.corpus_chrf(BASE, REFS, word_order=2).score
    assert results["TER"].score == sacrebleu.corpus_ter(BASE, REFS).score
    assert results["BLEU"].text == str(sacrebleu.corpus_bleu(BASE, REFS))


def test_signatures_are_sacrebleus():
    results = by_name(corpus_scores(BASE, REFS, ("bleu", "chrf", "chrf++", "ter")))
    version = f"version:{sacrebleu.__version__}"
    assert results["BLEU"].signature == f"nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|{version}"
    assert results["chrF"].signature == f"nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|{version}"
    assert "|nw:2|" in results["chrF++"].signature
    assert results["TER"].signature.startswith("nrefs:1|case:lc|tok:tercom")
    [two_refs] = corpus_scores(BASE, [REFS[0], CLOSE], ["bleu"])
    assert two_refs.signature.startswith("nrefs:2|")


def test_a_second_reference_can_only_raise_bleu():
    [one] = corpus_scores(BASE, REFS, ["bleu"])
    [two] = corpus_scores(BASE, [REFS[0], BASE], ["bleu"])  # BASE as its own second reference
    assert two.score == pytest.approx(100.0)
    assert one.score < 50.0


def test_lowercase_and_tokenizer_options():
    upper = [line.upper() for line in REFS[0]]
    [mixed] = corpus_scores(upper, REFS, ["bleu"])
    [lower] = corpus_scores(upper, REFS, ["bleu"], lowercase=True)
    assert mixed.score == 0.0 and lower.score == pytest.approx(100.0)
    assert "|case:lc|" in lower.signature
    [char] = corpus_scores(BASE, REFS, ["bleu"], tokenize="char")
    assert "|tok:char|" in char.signature


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"metrics": ["bleu", "meteor"]}, "unknown metric meteor; valid: bleu, chrf, chrf++, ter"),
     ({"metrics": []}, "no metric"),
     ({"tokenize": "moses"}, "unknown BLEU tokenizer 'moses'")],
)  # fmt: skip
def test_bad_options_are_config_errors(kwargs, needle):
    with pytest.raises(ConfigError, match=needle.replace("+", r"\+")):
        corpus_scores(BASE, REFS, **kwargs)


def test_line_count_mismatch_names_both_files_and_counts():
    with pytest.raises(InputError) as err:
        check_inputs(BASE, [REFS[0][:4]], "hyp.txt", ["ref.txt"])
    message = str(err.value)
    assert "hyp.txt has 6 lines but ref.txt has 4" in message
    assert message.startswith("ref.txt:5: ")  # the shorter file, at its first missing line


def test_empty_hypothesis_file_is_an_error():
    with pytest.raises(InputError, match="empty") as err:
        check_inputs([], [[]], "hyp.txt", ["ref.txt"])
    assert err.value.path == "hyp.txt"


def test_the_same_reference_twice_is_an_error(tmp_path):
    ref = tmp_path / "ref.txt"
    ref.write_text("x\n")
    (tmp_path / "sub").mkdir()
    same = str(tmp_path / "sub" / ".." / "ref.txt")  # another spelling of the same file
    with pytest.raises(InputError, match="given twice") as err:
        check_inputs(["x"], [["x"], ["x"]], "hyp.txt", [str(ref), same])
    assert err.value.path == same
    other = tmp_path / "ref2.txt"
    check_inputs(["x"], [["x"], ["x"]], "hyp.txt", [str(ref), str(other)])  # distinct files pass


def test_scoring_unaligned_streams_is_an_error():
    with pytest.raises(InputError, match="6 lines, but reference 1 has 5"):
        corpus_scores(BASE, [REFS[0][:5]])


def test_sentence_scores():
    rows = sentence_scores(["a b c d", "x y", "the cat"], [["a b c d", "p q", "the cat sat"]])
    assert [row["line"] for row in rows] == [1, 2, 3]
    assert (rows[0]["bleu"], rows[0]["chrf"], rows[0]["ter"]) == pytest.approx((100.0, 100.0, 0.0))
    assert (rows[1]["bleu"], rows[1]["chrf"], rows[1]["ter"]) == pytest.approx((0.0, 0.0, 100.0))
    # effective order: only 1- and 2-gram precisions exist, both 1; BP = exp(1 - 3/2)
    assert rows[2]["bleu"] == pytest.approx(100 * math.exp(-0.5))
    assert rows[2]["ter"] == pytest.approx(100 / 3)  # one insertion ("sat") over 3 reference words
    assert set(sentence_scores(["a"], [["a"]], ["chrf++"])[0]) == {"line", "chrf++"}


def test_no_warnings_for_clean_output():
    assert warnings_for(BASE, REFS) == []
    refs = [["Hello, world. It's fine."]]
    assert warnings_for(["Hello, world. It's fine."], refs) == []


def test_warns_about_tokenized_hypotheses():
    refs = [["Hello, world.", "It's fine.", "No."]]
    [warning] = warnings_for(["Hello , world .", "It 's fine .", "No ."], refs)
    assert "100% of hypothesis lines look tokenized" in warning and "0% of reference" in warning


def test_tokenized_references_silence_the_tokenized_warning():
    tokenized = ["Hello , world .", "It 's fine ."]
    assert warnings_for(tokenized, [tokenized]) == []


def test_warns_about_subword_markers():
    [warning] = warnings_for(["▁Hello ▁world", "Hel@@ lo world", "Hello world"], [["Hello world"] * 3])
    assert warning.startswith("2 hypothesis lines contain subword markers")


def test_warns_about_lowercased_hypotheses():
    [warning] = warnings_for(["hello world"], [["Hello world"]])
    assert "all lowercase" in warning
    assert warnings_for(["hello world"], [["hello world"]]) == []
    assert warnings_for(["123"], [["Hello"]]) == []  # no letters: nothing was lowercased


def run_test(method="bootstrap", seed=7, metrics=("bleu", "chrf")):
    return significance(
        BASE, {"close": CLOSE}, REFS, metrics, method=method, n_samples=200, n_confidence=200, seed=seed
    )


def test_bootstrap_is_reproducible_and_checked():
    result = run_test()
    assert result == run_test()
    assert (result.method, result.n_samples, result.seed) == ("bootstrap", 200, 7)
    rows = {(s.system, s.metric): s for s in result.scores}
    assert list(rows) == [("baseline", "BLEU"), ("close", "BLEU"), ("baseline", "chrF"), ("close", "chrF")]
    # p = (c + 1) / (n + 1): c of the 200 centred resample differences beat the real one
    assert rows["close", "BLEU"].p_value == pytest.approx(17 / 201)
    assert rows["close", "chrF"].p_value == pytest.approx(20 / 201)
    assert rows["baseline", "BLEU"].p_value is None
    [base_bleu] = corpus_scores(BASE, REFS, ["bleu"])
    assert rows["baseline", "BLEU"].score == base_bleu.score
    for row in result.scores:  # the score lies in its own 95 % interval
        assert row.mean - row.ci <= row.score <= row.mean + row.ci
    assert "|bs:200|seed:7|" in result.signatures["BLEU"]


def test_approximate_randomization():
    result = run_test(method="ar")
    assert result == run_test(method="ar")
    rows = {(s.system, s.metric): s for s in result.scores}
    assert rows["close", "BLEU"].p_value == pytest.approx(54 / 201)
    assert "|bs:200|ar:200|seed:7|" in result.signatures["BLEU"]


def test_our_seed_wins_over_the_environment(monkeypatch):
    expected = run_test()
    assert "SACREBLEU_SEED" not in os.environ  # set for the call only
    monkeypatch.setenv("SACREBLEU_SEED", "999")
    assert run_test() == expected
    assert os.environ["SACREBLEU_SEED"] == "999"  # and put back as it was
    assert run_test(seed=8).scores != expected.scores  # while our seed does matter


def test_significance_checks_its_arguments():
    with pytest.raises(ConfigError, match="valid: bootstrap, ar"):
        run_test(method="bs")
    with pytest.raises(ConfigError, match="positive"):
        run_test(seed=0)
    with pytest.raises(ConfigError, match="at least one system"):
        significance(BASE, {}, REFS)
    with pytest.raises(InputError, match="system 'short': 2 lines"):
        significance(BASE, {"short": CLOSE[:2]}, REFS)


@pytest.mark.parametrize("method", ["bootstrap", "ar"])
def test_a_system_identical_to_the_baseline_gets_one_over_n_plus_one(method):
    # every resampled difference is 0, so none beats the real difference of 0: c = 0, p = 1 / (50 + 1)
    result = significance(BASE, {"same": list(BASE)}, REFS, ["bleu"], method=method, n_samples=50, seed=3)
    same = result.scores[1]
    assert same.system == "same" and same.p_value == pytest.approx(1 / 51)
    assert same.score == result.scores[0].score

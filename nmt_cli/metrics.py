"""BLEU, chrF, chrF++ and TER through sacrebleu, each with its signature; paired significance tests."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import NamedTuple

from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.metrics.base import Metric, Score
from sacrebleu.significance import PairedTest

from nmt_cli.errors import ConfigError, InputError

METRICS = ("bleu", "chrf", "chrf++", "ter")
NAMES = {"bleu": "BLEU", "chrf": "chrF", "chrf++": "chrF++", "ter": "TER"}
METHODS = {"bootstrap": "bs", "ar": "ar"}  # our name -> sacrebleu's test_type
DEFAULT_METRICS = ("bleu", "chrf", "ter")

# A space before punctuation or an English clitic: what Moses-style tokenized text looks like.
_TOKENIZED = re.compile(r" [,.;:!?)](?: |$)|\( | '(?:s|re|ve|ll|d|m) | n't ")


class MetricResult(NamedTuple):
    """One corpus-level score, with what sacrebleu prints for it."""

    name: str  # "BLEU", "chrF", "chrF++" or "TER"
    score: float
    signature: str  # e.g. "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"
    text: str  # sacrebleu's score line, e.g. "BLEU = 27.31 58.1/33.0/21.1/13.9 (BP = 1.000 ...)"
    precisions: tuple[float, ...] = ()  # BLEU only: 1- to 4-gram precisions, in percent
    bp: float | None = None  # BLEU only: brevity penalty
    sys_len: int | None = None  # BLEU only: hypothesis tokens
    ref_len: int | None = None  # BLEU only: closest-reference tokens
    ratio: float | None = None  # BLEU only: sys_len / ref_len


class SystemScore(NamedTuple):
    """One system's score on one metric in a paired test."""

    system: str
    metric: str  # as MetricResult.name
    score: float
    mean: float | None  # mean over resamples; the 95 % interval is mean ± ci
    ci: float | None
    p_value: float | None  # None for the baseline, which is what the others are compared with


class Significance(NamedTuple):
    """Paired test results: baseline first, then each system in the order given, per metric."""

    method: str  # "bootstrap" or "ar"
    n_samples: int  # bootstrap resamples, or approximate-randomization trials
    seed: int
    signatures: dict[str, str]  # metric name -> signature, including seed and sample count
    scores: list[SystemScore]


def check_inputs(
    hyps: Sequence[str], refs: Sequence[Sequence[str]], hyp_path: str, ref_paths: Sequence[str]
) -> None:
    """Fail naming the files: an empty hypothesis file, a reference given twice, or unequal line counts."""
    if not ref_paths:
        raise ConfigError("at least one reference file is needed")
    if len(refs) != len(ref_paths):
        raise ValueError(f"{len(refs)} reference streams for {len(ref_paths)} reference paths")
    seen: dict[str, str] = {}
    for path in ref_paths:
        key = path if path == "-" else os.path.realpath(path)
        if key in seen:
            raise InputError(f"reference given twice (as {seen[key]} and {path})", path)
        seen[key] = path
    if not hyps:
        raise InputError("hypothesis file is empty: nothing to score", hyp_path)
    for path, lines in zip(ref_paths, refs, strict=True):
        if len(lines) != len(hyps):
            shorter = hyp_path if len(hyps) < len(lines) else path
            raise InputError(
                f"{hyp_path} has {len(hyps)} lines but {path} has {len(lines)}: "
                "each reference needs one line per hypothesis",
                shorter,
                min(len(hyps), len(lines)) + 1,
            )


def corpus_scores(
    hyps: Sequence[str],
    refs: Sequence[Sequence[str]],
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    lowercase: bool = False,
    tokenize: str = "13a",
) -> list[MetricResult]:
    """Corpus scores of N hypotheses against R reference streams of N lines, one result per metric.

    Call check_inputs first when the lines come from files, so that errors name them.
    """
    _require_aligned(hyps, refs)
    results = []
    for key in _check_metrics(metrics):
        metric = _make_metric(key, lowercase, tokenize)
        score = metric.corpus_score(list(hyps), [list(r) for r in refs])
        results.append(_result(NAMES[key], score, metric.get_signature().format()))
    return results


def sentence_scores(
    hyps: Sequence[str],
    refs: Sequence[Sequence[str]],
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    lowercase: bool = False,
    tokenize: str = "13a",
) -> list[dict[str, float]]:
    """One dict per hypothesis line: {"line": n (1-based), "bleu": ..., "chrf": ..., "ter": ...}.

    Sentence BLEU uses effective order (sacrebleu's advice), so a short line without a 4-gram
    match is not simply 0.
    """
    _require_aligned(hyps, refs)
    scorers = {key: _make_metric(key, lowercase, tokenize, sentence=True) for key in _check_metrics(metrics)}
    rows: list[dict[str, float]] = []
    for n, hyp in enumerate(hyps):
        line_refs = [stream[n] for stream in refs]
        row: dict[str, float] = {"line": n + 1}
        row.update({key: metric.sentence_score(hyp, line_refs).score for key, metric in scorers.items()})
        rows.append(row)
    return rows


def warnings_for(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> list[str]:
    """Human-readable reasons why the scores may mislead: tokenized, subword or lowercased output."""
    ref_lines = [line for stream in refs for line in stream]
    found = []
    tok_hyp, tok_ref = _share(hyps, _TOKENIZED.search), _share(ref_lines, _TOKENIZED.search)
    if tok_hyp >= 0.2 and tok_hyp > 2 * tok_ref:
        found.append(
            f"{tok_hyp:.0%} of hypothesis lines look tokenized (a space before punctuation, as in ' ,' "
            f"' .' \" 's\") but only {tok_ref:.0%} of reference lines do: detokenize before scoring"
        )
    marked = sum(_has_subword_marker(h) for h in hyps)
    if marked and not any(_has_subword_marker(r) for r in ref_lines):
        found.append(
            f"{marked} hypothesis lines contain subword markers ('▁' or '@@ '): "
            "decode the pieces to plain text before scoring"
        )
    hyp_text, ref_text = "".join(hyps), "".join(ref_lines)
    if hyp_text == hyp_text.lower() != hyp_text.upper() and ref_text != ref_text.lower():
        found.append(
            "hypotheses are all lowercase but the references are not: "
            "recase the output, or score case-insensitively"
        )
    return found


def significance(
    baseline_hyps: Sequence[str],
    systems: Mapping[str, Sequence[str]],
    refs: Sequence[Sequence[str]],
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    method: str = "bootstrap",
    n_samples: int | None = None,
    n_confidence: int = 1000,
    seed: int = 12345,
    baseline_name: str = "baseline",
) -> Significance:
    """Each system against the baseline (sacrebleu's PairedTest): paired bootstrap or approx. randomization.

    n_samples defaults to sacrebleu's (1000 resamples, 10000 trials); under "ar", n_confidence
    bootstrap resamples give the interval. p = (c + 1) / (n + 1), c counting strictly larger
    differences, so a system identical to the baseline gets 1 / (n + 1): read p with the scores.
    The same seed gives the same numbers, whatever SACREBLEU_SEED says.
    """
    test_type = _check_test(method, n_samples, n_confidence, seed)
    named = _named_systems(baseline_name, baseline_hyps, systems, refs)
    scorers = {NAMES[key]: _make_metric(key, False, "13a") for key in _check_metrics(metrics)}
    with _sacrebleu_seed(seed):
        test = PairedTest(
            named,
            scorers,
            references=[list(r) for r in refs],
            test_type=test_type,
            n_samples=n_samples or 0,  # 0 asks for sacrebleu's default
            n_ar_confidence=n_confidence if test_type == "ar" else -1,
        )
        signatures, table = test()
    # sacrebleu keys its table by its own score names ("chrF2"); the order is ours.
    pairs = list(zip(scorers, [name for name in table if name != "System"], strict=True))
    scores = [
        SystemScore(system, ours, float(r.score), _opt(r.mean), _opt(r.ci), _opt(r.p_value))
        for ours, theirs in pairs
        for system, r in zip(table["System"], table[theirs], strict=True)
    ]
    sigs = {ours: signatures[theirs].format() for ours, theirs in pairs}
    return Significance(method, test.n_samples, seed, sigs, scores)


class Interval(NamedTuple):
    """A corpus BLEU with its bootstrap 95 % interval (sacrebleu's n_bootstrap): mean ± ci."""

    score: float
    mean: float
    ci: float
    signature: str


def bleu_interval(
    hyps: Sequence[str], refs: Sequence[Sequence[str]], n_bootstrap: int = 1000, seed: int = 12345
) -> Interval:
    """Corpus BLEU and the 95 % interval of n_bootstrap resamples of the lines, seeded."""
    _require_aligned(hyps, refs)
    _check_test("bootstrap", n_bootstrap, 1, seed)
    metric = _make_metric("bleu", False, "13a")
    with _sacrebleu_seed(seed):
        score = metric.corpus_score(list(hyps), [list(r) for r in refs], n_bootstrap=n_bootstrap)
    return Interval(float(score.score), float(score._mean), float(score._ci), metric.get_signature().format())


def bleu_by_length(
    hyps: Sequence[str], refs: Sequence[str], lengths: Sequence[int], edges: Sequence[int]
) -> list[tuple[str, int, float | None]]:
    """Corpus BLEU of the lines in each source-length bucket: edges (10, 20) make buckets 1-10, 11-20,
    21+ -> [(label, lines, BLEU or None when the bucket is empty)]."""
    _require_aligned(hyps, [refs])
    bounds = [0, *edges]
    buckets: list[tuple[str, int, float | None]] = []
    for k, low in enumerate(bounds):
        high = bounds[k + 1] if k + 1 < len(bounds) else None
        rows = [n for n, x in enumerate(lengths) if x > low and (high is None or x <= high)]
        label = f"{low + 1}-{high}" if high is not None else f"{low + 1}+"
        if not rows:
            buckets.append((label, 0, None))
            continue
        bleu = _make_metric("bleu", False, "13a").corpus_score(
            [hyps[n] for n in rows], [[refs[n] for n in rows]]
        )
        buckets.append((label, len(rows), float(bleu.score)))
    return buckets


def _check_metrics(metrics: Sequence[str]) -> list[str]:
    keys = [m.lower() for m in metrics]
    if not keys:
        raise ConfigError(f"no metric asked for; valid: {', '.join(METRICS)}")
    if unknown := [m for m in keys if m not in METRICS]:
        raise ConfigError(f"unknown metric {', '.join(unknown)}; valid: {', '.join(METRICS)}")
    return list(dict.fromkeys(keys))  # each once, first order kept


def _check_test(method: str, n_samples: int | None, n_confidence: int, seed: int) -> str:
    if method not in METHODS:
        raise ConfigError(f"unknown significance method {method!r}; valid: {', '.join(METHODS)}")
    if n_samples is not None and n_samples < 1:
        raise ConfigError(f"n_samples must be at least 1, got {n_samples}")
    if n_confidence < 1:
        raise ConfigError(f"n_confidence must be at least 1, got {n_confidence}")
    if seed < 1:  # sacrebleu treats a seed of 0 as "no seed" and numpy refuses negative ones
        raise ConfigError(f"seed must be a positive integer, got {seed}")
    return METHODS[method]


def _named_systems(
    baseline_name: str,
    baseline_hyps: Sequence[str],
    systems: Mapping[str, Sequence[str]],
    refs: Sequence[Sequence[str]],
) -> list[tuple[str, list[str]]]:
    """[(name, hypotheses)], baseline first, as PairedTest takes them; each aligned with the references."""
    if not systems:
        raise ConfigError("a paired test needs at least one system besides the baseline")
    if baseline_name in systems:
        raise ConfigError(f"system name {baseline_name!r} is taken by the baseline")
    named = [(baseline_name, list(baseline_hyps)), *((name, list(h)) for name, h in systems.items())]
    for name, hyps in named:
        _require_aligned(hyps, refs, f"system {name!r}")
    return named


def _make_metric(key: str, lowercase: bool, tokenize: str, sentence: bool = False) -> Metric:
    if key == "bleu":
        if tokenize not in BLEU.TOKENIZERS:
            raise ConfigError(f"unknown BLEU tokenizer {tokenize!r}; valid: {', '.join(BLEU.TOKENIZERS)}")
        # force: sacrebleu's own tokenized-input warning would print per call; warnings_for() says it once
        return BLEU(lowercase=lowercase, tokenize=tokenize, effective_order=sentence, force=True)
    if key in ("chrf", "chrf++"):
        return CHRF(word_order=2 if key == "chrf++" else 0, lowercase=lowercase)
    return TER()  # sacrebleu's defaults (case-insensitive), as its own command line scores TER


def _result(name: str, score: Score, signature: str) -> MetricResult:
    result = MetricResult(name, float(score.score), signature, str(score))
    if name != "BLEU":
        return result
    return result._replace(
        precisions=tuple(float(p) for p in score.precisions),
        bp=float(score.bp),
        sys_len=int(score.sys_len),
        ref_len=int(score.ref_len),
        ratio=float(score.ratio),
    )


def _require_aligned(hyps: Sequence[str], refs: Sequence[Sequence[str]], what: str = "hypotheses") -> None:
    if not hyps:
        raise InputError(f"{what}: nothing to score")
    if not refs:
        raise ConfigError("at least one reference stream is needed")
    for k, stream in enumerate(refs, start=1):
        if len(stream) != len(hyps):
            raise InputError(f"{what}: {len(hyps)} lines, but reference {k} has {len(stream)}")


@contextmanager
def _sacrebleu_seed(seed: int) -> Iterator[None]:
    """PairedTest reads its seed from SACREBLEU_SEED (default 12345), so set it for this call only."""
    old = os.environ.get("SACREBLEU_SEED")
    os.environ["SACREBLEU_SEED"] = str(seed)
    try:
        yield
    finally:
        if old is None:
            del os.environ["SACREBLEU_SEED"]
        else:
            os.environ["SACREBLEU_SEED"] = old


def _share(lines: Sequence[str], test: Callable[[str], object]) -> float:
    """Fraction of non-empty lines for which test(line) is true."""
    nonempty = [line for line in lines if line.strip()]
    return sum(bool(test(line)) for line in nonempty) / len(nonempty) if nonempty else 0.0


def _has_subword_marker(line: str) -> bool:
    return "▁" in line or "@@ " in line or line.endswith("@@")


def _opt(value: float | None) -> float | None:
    return None if value is None else float(value)

"""evaluate, align, attention, curves, info and tune as users run them: stdout, stderr, exit codes, files."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from typer.testing import CliRunner

from nmt_cli import cmd_eval
from nmt_cli.align import alignment_error_rate, parse_pharaoh
from nmt_cli.analysis import translation_attention
from nmt_cli.checkpoint import load_model
from nmt_cli.cli import app
from nmt_cli.config import DecodeConfig
from nmt_cli.model import count_parameters
from nmt_cli.plot import DPI, attention_size
from tests.conftest import DATA
from tests.test_metrics import BASE, CLOSE, REFS
from tests.test_plot import png_size

runner = CliRunner()
N = 6  # lines of the toy test set used here


def invoke(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def head(name: str, n: int = N) -> list[str]:
    return (DATA / name).read_text(encoding="utf-8").splitlines()[:n]


@pytest.fixture
def files(tmp_path):
    """The first N toy test pairs and their gold alignments, plus two tiny systems and references."""
    for name in ("test.en", "test.de", "test.align"):
        (tmp_path / name).write_text("\n".join(head(name)) + "\n", encoding="utf-8")
    for name, lines in (("ref", REFS[0]), ("base", BASE), ("close", CLOSE)):
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    return tmp_path


# --- evaluate ------------------------------------------------------------------------------------


def test_evaluate_several_systems_prefixes_each_line_with_its_file(files):
    result = invoke("evaluate", "-r", files / "ref", files / "base", files / "close", "--metrics", "bleu")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(files / "base"), str(files / "close")]
    assert all(line.split("\t")[1].startswith("BLEU|nrefs:1|case:mixed|") for line in lines)


def test_evaluate_bootstrap_p_value_and_interval(files):
    args = ["evaluate", "-r", files / "ref", files / "base", files / "close", "--metrics", "bleu"]
    result = invoke(*args, "--significance", "bootstrap", "--seed", "7", "--samples", "200")
    assert result.exit_code == 0, result.stderr
    base, close = result.stdout.splitlines()
    assert "|bs:200|seed:7|" in base and base.endswith(" baseline")
    assert close.endswith(f" p = {17 / 201:.4f}")  # as metrics.significance gives for these inputs
    data = json.loads(
        invoke(*args, "--significance", "bootstrap", "--seed", "7", "--samples", "200", "--json").stdout
    )
    test = data[1]["significance"]
    assert (test["method"], test["n_samples"], test["seed"], test["baseline"]) == (
        "bootstrap",
        200,
        7,
        str(files / "base"),
    )
    assert test["p_value"] == round(17 / 201, 6) and data[0]["significance"]["p_value"] is None
    assert test["mean"] - test["ci"] <= data[1]["score"] <= test["mean"] + test["ci"]


def test_evaluate_ar_and_identical_systems(files):
    args = ["evaluate", "-r", files / "ref", files / "base", files / "base2", "--metrics", "bleu"]
    (files / "base2").write_text((files / "base").read_text())
    result = invoke(*args, "--significance", "ar", "--samples", "50")
    assert result.exit_code == 0, result.stderr
    assert "|ar:50|seed:12345|" in result.stdout and result.stdout.endswith(f" p = {1 / 51:.4f}\n")
    assert "base2 is identical to the baseline" in result.stderr  # 1/51 < 0.05 would mislead otherwise


def test_evaluate_sentence_scores_jsonl_and_tsv(files):
    args = ["evaluate", "-r", files / "ref", files / "base", "--sentence", "--metrics", "bleu,ter"]
    records = [json.loads(line) for line in invoke(*args).stdout.splitlines()]
    assert [r["line"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[0]["hyp"] == BASE[0] and records[0]["refs"] == [REFS[0][0]]
    # "the cat sat on a mat" vs "the cat sat on the mat": one substitution in six words
    assert records[0]["ter"] == pytest.approx(100 / 6, abs=1e-3)
    tsv = invoke(*args, "--tsv").stdout.splitlines()
    assert tsv[0] == "system\tline\tbleu\tter" and len(tsv) == 7
    assert tsv[1].split("\t")[:2] == [str(files / "base"), "1"]
    assert float(tsv[1].split("\t")[3]) == pytest.approx(100 / 6, abs=1e-3)


def test_evaluate_score_only_and_terminal_table(files, monkeypatch):
    args = ["evaluate", "-r", files / "ref", files / "ref", files / "base", "--metrics", "bleu,ter"]
    lines = invoke(*args, "--score-only").stdout.splitlines()
    assert lines[0] == "100.00\t0.00" and len(lines) == 2  # the reference scored as a system
    monkeypatch.setattr(cmd_eval, "_stdout_is_terminal", lambda: True)
    table = invoke(*args).stdout
    assert "system" in table and "100.00" in table and "TER|nrefs:1|case:lc" in table
    table = invoke(*args, "--significance", "bootstrap", "--samples", "20").stdout
    assert "paired bootstrap resampling, 20 samples, seed 12345" in table and "baseline" in table


@pytest.mark.parametrize(
    "args, message",
    [
        (["{d}/ref", "{d}/short"], "{d}/short:3: {d}/short has 2 lines but {d}/ref has 6"),
        (["{d}/ref", "{d}/empty"], "{d}/empty: hypothesis file is empty: nothing to score"),
        (["{d}/ref", "-r", "{d}/ref", "{d}/base"], "{d}/ref: reference given twice"),
        (["{d}/ref", "{d}/base", "{d}/base"], "hypothesis file given twice: {d}/base"),
        (["{d}/ref", "{d}/base", "--significance", "bootstrap"], "--significance needs at least two"),
        (["{d}/ref", "{d}/base", "{d}/close", "--significance", "t"], "unknown significance method 't'"),
        (["{d}/ref", "{d}/base", "--tsv"], "--tsv is for --sentence output"),
    ],
)
def test_evaluate_errors(files, args, message):
    (files / "short").write_text("a\nb\n")
    (files / "empty").write_text("")
    result = invoke("evaluate", "-r", *(a.format(d=files) for a in args))
    assert result.exit_code == 1 and result.stdout == ""
    assert (
        result.stderr.startswith("nmt: error: " + message.format(d=files)) and result.stderr.count("\n") == 1
    )


def test_evaluate_warns_about_tokenized_lowercase_output(files):
    (files / "tok").write_text("the cat sat on the mat .\n" * 6)
    (files / "cased").write_text("The cat sat on the mat.\n" * 6)
    result = invoke("evaluate", "-r", files / "cased", files / "tok")
    assert result.exit_code == 0
    assert "look tokenized" in result.stderr and "all lowercase" in result.stderr


# --- align ---------------------------------------------------------------------------------------


def test_align_forced_with_gold(trained, files):
    out = files / "out.align"
    args = ["align", "-m", trained, "--src", files / "test.en", "--tgt", files / "test.de"]
    result = invoke(*args, "--gold", files / "test.align", "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    predicted = [parse_pharaoh(line) for line in out.read_text().splitlines()]
    gold = [parse_pharaoh(line) for line in head("test.align")]
    assert len(predicted) == N and record["alignments"] == out.read_text().splitlines()
    assert record["aer"] == pytest.approx(alignment_error_rate(predicted, gold))
    assert f"AER {record['aer']:.4f} against {files / 'test.align'} ({N} lines)" in result.stderr
    for links, en, de in zip(predicted, head("test.en"), head("test.de"), strict=True):
        assert {j for _, j in links} == set(range(len(de.split())))  # every target word, exactly once
        assert all(i < len(en.split()) for i, _ in links)
    assert (record["mode"], record["level"], record["unaligned_lines"]) == ("forced", "word", [])


@pytest.mark.parametrize("beam_size", [1, 2])
def test_align_translations(trained, files, beam_size):
    src = files / "src.en"
    src.write_text("the dog sees the cat .\n\nthe small boy runs .\n")
    result = invoke("align", "-m", trained, "--src", src, "-b", beam_size, "--json")
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    hyps = invoke("translate", "-m", trained, "-b", beam_size, "-q", src).stdout.splitlines()
    assert record["hyps"] == hyps and record["mode"] == ("greedy" if beam_size == 1 else "beam")
    assert record["alignments"][1] == "" and "decode|" in result.stderr
    for alignment, hyp in zip(record["alignments"], hyps, strict=True):
        assert {j for _, j in parse_pharaoh(alignment)} == set(range(len(hyp.split())))
    plain = invoke("align", "-m", trained, "--src", src, "-b", beam_size)
    assert plain.stdout.splitlines() == record["alignments"]


def test_align_subword_level_counts_pieces(trained, files):
    result = invoke(
        "align", "-m", trained, "--src", files / "test.en", "--tgt", files / "test.de", "--level", "subword"
    )
    sub = load_model(trained).subword
    for line, en, de in zip(result.stdout.splitlines(), head("test.en"), head("test.de"), strict=True):
        links = parse_pharaoh(line)
        assert {j for _, j in links} == set(range(len(sub.pieces(de))))
        assert max(i for i, _ in links) < len(sub.pieces(en))


@pytest.mark.parametrize(
    "gold_text, extra, message",
    [
        ("0-0 1-1\n0-x\n", [], "{d}/gold:2: bad alignment link '0-x'"),
        ("0-0\n0-9\n", [], "{d}/gold:2: alignment link 0-9 is outside the sentence pair (2 source, 3 target"),
        ("0-0\n", [], "{d}/gold:2: {d}/gold has 1 lines but {d}/a.en has 2"),
        ("0-0\n0-0\n", ["--level", "subword"], "--gold needs --tgt and word level"),
    ],
)
def test_align_gold_errors(trained, files, gold_text, extra, message):
    (files / "a.en").write_text("the dog\nthe cat\n")
    (files / "a.de").write_text("der Hund\nder Katze x\n")
    (files / "gold").write_text(gold_text)
    args = ["--src", files / "a.en", "--tgt", files / "a.de", "--gold", files / "gold", *extra]
    result = invoke("align", "-m", trained, *args)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith("nmt: error: " + message.format(d=files))


def test_align_line_count_mismatch_names_both_files(trained, files):
    (files / "one.de").write_text("der Hund .\n")
    result = invoke("align", "-m", trained, "--src", files / "test.en", "--tgt", files / "one.de")
    assert result.exit_code == 1
    assert f"{files / 'test.en'} has {N} lines but {files / 'one.de'} has 1" in result.stderr


# --- attention -----------------------------------------------------------------------------------


def test_attention_for_chosen_lines_of_a_file(trained, files):
    result = invoke(
        "attention", "-m", trained, "--input", files / "test.en", "--lines", "3,1", "-o", files / "h.png"
    )
    assert result.exit_code == 0, result.stderr
    lines = [head("test.en")[2], head("test.en")[0]]
    pairs = translation_attention(load_model(trained), lines, DecodeConfig(beam_size=1))
    for n, pair in zip((3, 1), pairs, strict=True):
        rows = len(pair.tgt_pieces) + (pair.eos is not None)
        width, height = attention_size(len(pair.src_pieces), rows)
        assert png_size((files / f"h-{n}.png").read_bytes()) == (round(width * DPI), round(height * DPI))
    assert result.stdout.splitlines()[0] == f"line 3: {pairs[0].tgt}"


def test_attention_word_level_svg_and_terminal(trained, files):
    svg = files / "w.svg"
    result = invoke(
        "attention", "-m", trained, "the dog sees the cat .", "--level", "word", "-o", svg, "-b", "2"
    )
    assert result.exit_code == 0, result.stderr
    pair = translation_attention(load_model(trained), ["the dog sees the cat ."], DecodeConfig(beam_size=2))[
        0
    ]
    width, height = attention_size(6, len(pair.tgt.split()) + (pair.eos is not None))  # words, not pieces
    root = ET.fromstring(svg.read_bytes())
    assert (root.get("width"), root.get("height")) == (f"{width * 72:g}pt", f"{height * 72:g}pt")
    text = invoke("attention", "-m", trained, "the dog sees the cat .", "--level", "word").stdout
    assert " cat " in text and "▁" not in text  # word labels; and shades, since stdout is no terminal
    assert "\x1b[" not in text and set("░▒▓█") & set(text)


def test_attention_errors(trained, files):
    result = invoke("attention", "-m", trained, "--input", files / "test.en", "--lines", "2,9")
    assert result.exit_code == 1
    assert (
        result.stderr.strip() == f"nmt: error: {files / 'test.en'}:9: line 9 is beyond the file's {N} lines"
    )
    result = invoke("attention", "-m", trained, "--input", files / "test.en", "--lines", "0")
    assert result.exit_code == 1 and "1-based line numbers" in result.stderr
    result = invoke("attention", "-m", trained, "x", "-o", files / "a.jpg")
    assert result.exit_code == 1 and "use one of .png, .svg, .pdf" in result.stderr


# --- curves, info, tune --------------------------------------------------------------------------


def test_curves_from_a_run_directory(trained, tmp_path):
    out = tmp_path / "c.png"
    result = invoke("curves", trained.parent, "-o", out)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{out}\n" and png_size(out.read_bytes()) == (1000, 800)
    missing = invoke("curves", tmp_path / "nope")
    assert missing.exit_code == 1 and f"{tmp_path / 'nope'}: no such file" in missing.stderr


def test_info_reads_the_header_only(trained, monkeypatch):
    loaded = load_model(trained)

    def no_building(cfg):
        raise AssertionError("info built the model")

    monkeypatch.setattr("nmt_cli.checkpoint.build_model", no_building)
    data = json.loads(invoke("info", trained, "--json").stdout)
    assert data["model"] == loaded.digest and data["config"]["vocab_size"] == loaded.config.vocab_size
    assert data["info"]["step"] == loaded.info["step"] in (75, 150)  # model.nmt: the best validation
    assert data["info"]["parameters"] == count_parameters(loaded.model)
    assert data["info"]["train_config"]["max_steps"] == 150
    text = invoke("info", trained).stdout
    assert f"parameters   {count_parameters(loaded.model):,}\n" in text
    assert "dev BLEU" in text and "BLEU|nrefs:1|" in text and "150 steps" in text
    assert invoke("info", "missing.nmt").stderr.strip() == "nmt: error: missing.nmt: no such model file"


def test_tune_sweeps_beam_and_alpha(trained, files):
    args = ["tune", "-m", trained, "--src", files / "test.en", "--ref", files / "test.de"]
    result = invoke(*args, "--beam-sweep", "1,2", "--alpha-sweep", "0,1", "--json")
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)["rows"]
    assert [(r["beam_size"], r["length_penalty"]) for r in rows] == [(1, None), (2, 0.0), (2, 1.0)]
    greedy = files / "greedy.de"
    invoke("translate", "-m", trained, "-b", "1", "-q", files / "test.en", "-o", greedy)
    bleu = invoke("evaluate", "-r", files / "test.de", greedy, "--metrics", "bleu", "--score-only").stdout
    assert f"{rows[0]['bleu']:.2f}" == bleu.strip()
    table = invoke(*args, "--beam-sweep", "1", "--alpha-sweep", "0").stdout.splitlines()
    assert table[0].split() == ["beam", "alpha", "BLEU", "ratio", "empty", "seconds"]
    assert table[1].split()[:2] == ["1", "-"] and table[-1].startswith("BLEU|nrefs:1|")
    bad = invoke(*args, "--beam-sweep", "0,2")
    assert bad.exit_code == 1 and "--beam-sweep takes comma-separated beam sizes" in bad.stderr

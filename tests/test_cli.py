"""The command line as users see it: results on stdout, logs on stderr, exit codes, one-line errors."""

import json

import pytest
from typer.testing import CliRunner

from nmt_cli.cli import app

runner = CliRunner()


def invoke(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def test_help_lists_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("prepare", "subword", "train", "translate", "evaluate", "attention"):
        assert command in result.stdout


def test_translate_stdin_three_lines_with_an_empty_one(trained):
    result = invoke("translate", "-m", trained, input="the dog sleeps .\n\nthe cat sees the dog .\n")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.split("\n")
    assert len(lines) == 4 and lines[3] == "" and lines[1] == ""  # 3 lines, the middle one empty
    assert lines[0] and lines[2]
    assert "decode|model:" in result.stderr and "decode|" not in result.stdout


def test_translate_jsonl_and_output_file(trained, tmp_path):
    result = invoke(
        "translate",
        "-m",
        trained,
        "--format",
        "jsonl",
        "-b",
        "2",
        "--n-best",
        "2",
        input="the dog sleeps .\n\n",
    )
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["line"] for r in records] == [1, 2] and len(records[0]["nbest"]) == 2
    assert records[1]["hyp"] == "" and records[0]["signature"].startswith("decode|")
    out = tmp_path / "hyp.txt"
    result = invoke("translate", "-m", trained, "-o", out, input="the dog sleeps .\n")
    assert result.exit_code == 0 and result.stdout == "" and out.read_text().count("\n") == 1


def test_empty_input_gives_empty_output(trained):
    result = invoke("translate", "-m", trained, input="")
    assert result.exit_code == 0 and result.stdout == ""


@pytest.mark.parametrize(
    "args, message",
    [
        (["translate", "-m", "missing.nmt"], "nmt: error: missing.nmt: no such model file"),
        (["evaluate", "-r", "nope.de", "nope.en"], "nmt: error: nope.en: no such file"),
        (
            ["train", "--src", "a", "--tgt", "b", "-o", "x", "--attention", "cosine", "--max-steps", "1"],
            "nmt: error: unknown attention type 'cosine'; valid: none, bahdanau, dot, general, scaled-dot",
        ),
        (
            ["train", "--src", "a", "--tgt", "b", "-o", "x", "--preset", "huge"],
            "nmt: error: unknown preset 'huge'; valid: base-rnn, cpu-15min, toy, tiny",
        ),
    ],
)
def test_errors_are_one_line_with_exit_1(args, message):
    result = invoke(*args)
    assert result.exit_code == 1
    assert result.stderr.strip() == message
    assert result.stdout == ""


def test_not_a_model_file(tmp_path):
    fake = tmp_path / "fake.nmt"
    fake.write_text("not a model")
    result = invoke("translate", "-m", fake, input="x\n")
    assert result.exit_code == 1 and "not an nmt model file" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_utf8_names_the_line(trained, tmp_path):
    bad = tmp_path / "bad.en"
    bad.write_bytes(b"the dog .\n\xff\xfe\n")
    result = invoke("translate", "-m", trained, bad, "-o", tmp_path / "out.txt")
    assert result.exit_code == 1
    assert result.stderr.strip().endswith(f"{bad}:2: invalid UTF-8 at byte 0")
    assert not (tmp_path / "out.txt").exists()  # no partial output file


def test_usage_error_exits_2():
    assert invoke("translate").exit_code == 2


def test_evaluate_prints_signatures(tmp_path):
    ref = tmp_path / "ref.de"
    ref.write_text("der Hund schläft .\ndie Katze sieht den Hund .\n")
    result = invoke(
        "evaluate", "-r", ref, ref.as_posix().replace("ref.de", "ref.de"), "--metrics", "bleu,chrf"
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("BLEU|nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert " = 100.00 " in result.stdout.splitlines()[0]
    data = json.loads(invoke("evaluate", "-r", ref, ref, "--json").stdout)
    assert [d["name"] for d in data] == ["BLEU", "chrF", "TER"] and data[2]["score"] == 0.0


def test_evaluate_line_count_mismatch(tmp_path):
    (tmp_path / "ref").write_text("a\nb\n")
    (tmp_path / "hyp").write_text("a\n")
    result = invoke("evaluate", "-r", tmp_path / "ref", tmp_path / "hyp")
    assert result.exit_code == 1 and "has 1 lines but" in result.stderr and "has 2" in result.stderr


def test_subword_encode_decode_round_trip(trained):
    enc = invoke("subword", "encode", "-m", trained, input="the dog sleeps .\n\nder Hund .\n")
    assert enc.exit_code == 0 and len(enc.stdout.splitlines()) == 3
    dec = invoke("subword", "decode", "-m", trained, input=enc.stdout)
    assert dec.stdout == "the dog sleeps .\n\nder Hund .\n"


def test_attention_in_the_terminal_and_to_a_file(trained, tmp_path):
    result = invoke("attention", "-m", trained, "the dog sees the cat .", "--no-color")
    assert result.exit_code == 0, result.stderr
    assert "▁cat" in result.stdout and "░" in result.stdout  # source pieces across, shades without colour
    png = tmp_path / "a.png"
    result = invoke("attention", "-m", trained, "the dog sees the cat .", "-o", png)
    assert result.exit_code == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    src = tmp_path / "src.en"
    src.write_text("the dog .\n")
    result = invoke("attention", "-m", trained, "--input", src, "--line", "5")
    assert result.exit_code == 1 and f"{src}:5: line 5 is beyond the file's 1 lines" in result.stderr


def test_train_refuses_to_overwrite_and_trains_its_own_subwords(corpus, tmp_path):
    args = [
        "train",
        "--preset",
        "tiny",
        "--src",
        corpus.train_src,
        "--tgt",
        corpus.train_tgt,
        "--max-steps",
        "2",
        "-o",
        tmp_path / "run",
        "--quiet",
    ]
    first = invoke(*args)
    assert first.exit_code == 0, first.stderr
    assert "steps\t2" in first.stdout and (tmp_path / "run" / "spm.model").exists()
    before = (tmp_path / "run" / "model.nmt").read_bytes()
    again = invoke(*args)
    assert again.exit_code == 1 and "use --resume to continue or --overwrite" in again.stderr
    assert (tmp_path / "run" / "model.nmt").read_bytes() == before  # nothing touched
    assert invoke(*args, "--overwrite").exit_code == 0

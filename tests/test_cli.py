"""The command line as users see it: results on stdout, logs on stderr, exit codes, one-line errors."""

import json
import os
import subprocess
import sys

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


def test_version():
    from nmt_cli import __version__

    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout == f"nmt {__version__}\n" and result.stderr == ""
    assert __version__ == "0.1.0"


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
        (
            [
                "train",
                "--src",
                "a",
                "--tgt",
                "b",
                "-o",
                "x",
                "--preset",
                "base-rnn",
                "--decoder-hidden",
                "600",
            ],
            "nmt: error: decoder_init last needs the encoder output size (512: encoder_hidden 256 x 2 "
            "directions) == decoder_hidden (600); use decoder_init bridge or zero",
        ),
        (
            ["train", "--src", "a", "--tgt", "b", "-o", "x", "--decoder-init", "last", "--bridge"],
            "nmt: error: bridge true contradicts decoder_init last",
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
    hyp = tmp_path / "hyp.de"
    hyp.write_text("der Hund schläft .\ndie Katze sieht einen Hund .\n")
    result = invoke("evaluate", "-r", ref, hyp, "--metrics", "bleu,chrf")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("BLEU|nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    # one word of 10 differs: 1-4-gram precisions 9/10, 6/8, 3/6, 1/4, (.9 * .75 * .5 * .25) ** .25 = 53.90
    assert (
        " = 53.90 90.0/75.0/50.0/25.0 (BP = 1.000 ratio = 1.000 hyp_len = 10 ref_len = 10)"
        in (result.stdout.splitlines()[0])
    )
    same = invoke("evaluate", "-r", ref, ref, "--metrics", "bleu")
    assert " = 100.00 " in same.stdout
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


def test_translate_read_error_is_one_line_and_does_not_hang(trained):
    # /proc/self/mem opens, but reading it fails with EIO: before, the reader thread died with a
    # traceback and translate waited forever
    if not os.path.exists("/proc/self/mem"):
        pytest.skip("needs Linux's /proc/self/mem")
    done = subprocess.run(
        [sys.executable, "-m", "nmt_cli", "translate", "-m", str(trained), "/proc/self/mem", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == "nmt: error: /proc/self/mem:1: cannot read: Input/output error\n"


def test_translate_checks_its_output_before_decoding(trained, tmp_path, monkeypatch):
    import nmt_cli.translate

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded before checking -o")

    monkeypatch.setattr(nmt_cli.translate, "translate_lines", no_decoding)
    (tmp_path / "some_dir").mkdir()
    result = invoke("translate", "-m", trained, "-o", tmp_path / "some_dir", input="a dog .\n")
    assert result.exit_code == 1
    assert result.stderr == f"nmt: error: {tmp_path / 'some_dir'}: is a directory, expected a file to write\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["translate", "--max-len-a", "inf"], "max_len_a must be a finite number, got inf"),
        (["translate", "--threads", "-1"], "--threads must be at least 0 (0: the default), got -1"),
        (["score", "--threads", "-1", "--src", "{src}", "--tgt", "{src}"], "--threads must be at least 0"),
        (["align", "--batch-size", "0", "--src", "{src}"], "--batch-size must be at least 1, got 0"),
        (
            ["tune", "--batch-size", "0", "--src", "{src}", "--ref", "{src}"],
            "--batch-size must be at least 1",
        ),
    ],
)
def test_bad_numbers_are_one_line_errors(trained, tmp_path, args, message):
    src = tmp_path / "src.txt"
    src.write_text("a dog .\n")
    args = [a.format(src=src) for a in args]
    result = invoke(*args[:1], "-m", trained, *args[1:], input="a dog .\n")
    assert result.exit_code == 1, result.stderr
    assert result.stderr == f"nmt: error: {message}\n" or (
        result.stderr.startswith(f"nmt: error: {message}") and result.stderr.count("\n") == 1
    )


def test_subword_decode_ids_out_of_range_names_the_piped_line(trained):
    # piped input arrives in chunks of any size: the line number must count lines, not chunks
    vocab = invoke("subword", "encode", "-m", trained, "--ids", input="a dog .\n").stdout.split()
    assert vocab
    result = invoke("subword", "decode", "-m", trained, "--ids", input="4 5\n\n99999\n")
    assert result.exit_code == 1
    assert result.stderr.startswith("nmt: error: -:3: id 99999 is outside the vocabulary (0 to ")
    assert result.stderr.count("\n") == 1


def test_nbest_lists_complete_translations_first(trained):
    # best first means: translations that ended with EOS, by score, then any the length cap cut, by
    # score; each entry says which it is. A cap of 2 pieces cuts most hypotheses.
    result = invoke(
        "translate", "-m", trained, "--format", "jsonl", "-b", "4", "--n-best", "4", "--max-len-a", "0",
        "--max-len-b", "2", "-q", input="a dog runs on the grass .\nthe man .\n",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    for record in map(json.loads, result.stdout.splitlines()):
        nbest = record["nbest"]
        assert nbest[0]["hyp"] == record["hyp"] and nbest[0]["score"] == record["score"]
        keys = [(not h["finished"], -h["score"]) for h in nbest]
        assert keys == sorted(keys)

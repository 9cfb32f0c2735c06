"""Decoding through the command line: streaming stdin, the line contract in bytes, batch invariance,
JSONL, int8, shortlists and scoring."""

from __future__ import annotations

import json
import os
import platform
import queue
import subprocess
import sys
import threading

import pytest
from typer.testing import CliRunner

from nmt_cli.checkpoint import load_model
from nmt_cli.cli import app
from nmt_cli.cpu import int8 as quantize
from nmt_cli.textio import read_lines
from nmt_cli.translate import score_lines

runner = CliRunner()


def invoke(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def readline_within(stream, seconds: float) -> bytes | None:
    """One line from a pipe, or None if none comes in time."""
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    try:
        return lines.get(timeout=seconds)
    except queue.Empty:
        return None


def test_stdin_is_translated_line_by_line_as_it_arrives(trained, tmp_path):
    command = [sys.executable, "-m", "nmt_cli", "translate", "-m", str(trained), "-b", "1", "-q"]
    with open(tmp_path / "stderr", "wb") as stderr:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        try:
            proc.stdin.write(b"the dog sleeps .\n")
            proc.stdin.flush()
            first = readline_within(proc.stdout, 60)  # stdin is still open: no end of input yet
            assert first is not None and first.strip(), (tmp_path / "stderr").read_text()
            proc.stdin.write(b"the cat sees the dog .\n")
            proc.stdin.close()
            rest = proc.stdout.read()
            assert proc.wait(timeout=60) == 0
        finally:
            proc.kill()
    assert rest.count(b"\n") == 1 and rest.strip()


# '\r', U+2028, U+2029 and U+0085 inside a line are part of it; only '\n' ends a line ('\r\n' too)
ODD_LINES = [
    "the dog\rsleeps .",
    "the cat\u2028sees the dog .",
    "a man\u2029reads .",
    "the\u0085dog .",
    "",
    "the dog sleeps .\r",
]


@pytest.mark.parametrize("fmt", ["text", "jsonl"])
def test_only_newline_ends_a_line(trained, fmt):
    data = "".join(line + "\n" for line in ODD_LINES).encode("utf-8")
    result = invoke("translate", "-m", trained, "-b", "1", "--format", fmt, input=data)
    assert result.exit_code == 0, result.stderr
    out = result.stdout_bytes
    assert out.count(b"\n") == len(ODD_LINES)
    lines = out.split(b"\n")[:-1]
    if fmt == "text":
        assert lines[4] == b"" and all(lines[n] for n in (0, 1, 2, 3, 5))
    else:
        for raw in ("\u2028", "\u2029", "\u0085"):  # escaped, so that no reader breaks a record
            assert raw.encode() not in out
        records = [json.loads(line) for line in lines]
        assert [r["src"] for r in records] == ODD_LINES[:5] + ["the dog sleeps ."]
        assert [r["line"] for r in records] == [1, 2, 3, 4, 5, 6]


def test_an_over_long_line_is_split_and_named(trained):
    long_line = " ".join(["the dog sleeps ."] * 6)
    result = invoke(
        "translate", "-m", trained, "-b", "1", "--max-input-tokens", "5", input=f"a\n{long_line}\n"
    )
    assert result.exit_code == 0 and result.stdout.count("\n") == 2
    assert "line 2:" in result.stderr and "pieces" in result.stderr


@pytest.mark.parametrize("int8", [[], ["--int8"]], ids=["fp32", "int8"])
@pytest.mark.parametrize("beam", ["1", "4"])
def test_batch_size_never_changes_the_output(trained, corpus, tmp_path, beam, int8):
    src = tmp_path / "dev.txt"
    src.write_text("".join(line + "\n" for line in read_lines(corpus.dev_src)[:30]))
    outputs = {
        size: invoke("translate", "-m", trained, "-b", beam, "--batch-size", size, "-q", *int8, src).stdout
        for size in (1, 7, 64)
    }
    assert outputs[1].count("\n") == 30 and len(set(outputs[1].splitlines())) > 10
    assert outputs[1] == outputs[7] == outputs[64]


def test_search_options_reach_the_signature(trained):
    result = invoke(
        "translate",
        "-m",
        trained,
        "--length-penalty-type",
        "gnmt",
        "--ban-unk",
        "--int8",
        input="the dog .\n",
    )
    assert result.exit_code == 0 and result.stdout.count("\n") == 1
    int8 = quantize.KERNEL + ("+bf16-encoder" if quantize.ENCODER == "bf16" else "")
    assert f"|lp:1.0gnmt|maxlen:1.5x+10|unk:ban|int8:{int8}|shortlist:no|" in result.stderr
    bad = invoke("translate", "-m", trained, "--length-penalty-type", "wu", input="x\n")
    assert bad.exit_code == 1 and bad.stderr.strip().startswith(
        "nmt: error: unknown length penalty type 'wu'"
    )


def test_shortlist_command_and_translate_with_it(trained, corpus, tmp_path):
    listed = tmp_path / "listed.nmt"
    result = invoke(
        "shortlist",
        "-m",
        trained,
        "--src",
        corpus.train_src,
        "--tgt",
        corpus.train_tgt,
        "-k",
        "4",
        "-o",
        listed,
    )
    assert result.exit_code == 0, result.stderr
    assert "shortlist: 4 per source piece + 100 frequent" in result.stderr and result.stdout == ""
    assert load_model(trained).extras == {} and set(load_model(listed).extras) == {
        "shortlist.table",
        "shortlist.frequent",
    }
    ok = invoke("translate", "-m", listed, "--shortlist", "4", input="the dog sleeps .\n\n")
    assert ok.exit_code == 0 and ok.stdout.count("\n") == 2 and "|shortlist:4+100|" in ok.stderr
    too_many = invoke("translate", "-m", listed, "--shortlist", "5", input="x\n")
    assert too_many.exit_code == 1 and "more than the table's 4" in too_many.stderr
    missing = invoke("translate", "-m", trained, "--shortlist", "4", input="x\n")
    assert missing.exit_code == 1 and "no shortlist table" in missing.stderr


def test_score_prints_log_probs_per_line(trained, tmp_path):
    src, tgt = tmp_path / "src", tmp_path / "tgt"
    src.write_text("the dog sleeps .\n\nthe cat .\n")
    tgt.write_text("der Hund schläft .\nx\n\n")
    result = invoke("score", "-m", trained, "--src", src, "--tgt", tgt)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.startswith("score|model:")
    lines = result.stdout.split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[3] == ""  # an empty source gets an empty line
    expected = score_lines(load_model(trained), read_lines(src), read_lines(tgt))
    for line, want in zip((lines[0], lines[2]), (expected[0], expected[2]), strict=True):
        total, n, per_token = line.split("\t")
        values = [float(x) for x in per_token.split(" ")]
        assert int(n) == len(values) == len(want.token_log_probs)
        assert float(total) == pytest.approx(want.log_prob, abs=1e-4)
        assert sum(values) == pytest.approx(float(total), abs=1e-3)
    records = [
        json.loads(x)
        for x in invoke(
            "score", "-m", trained, "--src", src, "--tgt", tgt, "--format", "jsonl"
        ).stdout.splitlines()
    ]
    assert [r["line"] for r in records] == [1, 2, 3] and records[1]["log_prob"] is None
    assert records[2]["n_tokens"] == 1 and records[2]["tgt_pieces"] == []  # just EOS
    mismatch = invoke("score", "-m", trained, "--src", src, "--tgt", tmp_path / "nope")
    assert mismatch.exit_code == 1 and "no such file" in mismatch.stderr


def test_tune_with_int8_and_a_shortlist_scores_what_translate_outputs(trained, corpus, tmp_path):
    listed = tmp_path / "listed.nmt"
    args = ["-m", trained, "--src", corpus.train_src, "--tgt", corpus.train_tgt, "-k", "4", "-o", listed]
    assert invoke("shortlist", *args).exit_code == 0
    src, ref = tmp_path / "dev.src", tmp_path / "dev.ref"
    src.write_text("".join(line + "\n" for line in read_lines(corpus.dev_src)[:30]))
    ref.write_text("".join(line + "\n" for line in read_lines(corpus.dev_tgt)[:30]))
    fast = ["--int8", "--shortlist", "4"]
    tuned = invoke("tune", "-m", listed, "--src", src, "--ref", ref, "--beam-sweep", "1", *fast, "--json")
    assert tuned.exit_code == 0, tuned.stderr
    record = json.loads(tuned.stdout)
    assert record["int8"] is True and record["shortlist"] == 4
    hyp = tmp_path / "hyp"
    assert invoke("translate", "-m", listed, "-b", "1", *fast, "-q", src, "-o", hyp).exit_code == 0
    bleu = invoke("evaluate", "-r", ref, hyp, "--metrics", "bleu", "--score-only").stdout.strip()
    assert f"{record['rows'][0]['bleu']:.2f}" == bleu
    plain = invoke("tune", "-m", listed, "--src", src, "--ref", ref, "--beam-sweep", "1", "--json").stdout
    assert json.loads(plain)["rows"][0]["bleu"] != record["rows"][0]["bleu"]  # the options did something


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt's arena setting is glibc's")
def test_translate_asks_for_one_malloc_arena_unless_the_user_chose():
    code = "from nmt_cli.cpu.process import _one_malloc_arena; print(_one_malloc_arena())"
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    for extra, expected in (({}, "True"), ({"MALLOC_ARENA_MAX": "4"}, "False")):
        out = subprocess.run(
            [sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == expected, extra

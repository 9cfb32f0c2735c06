"""Progress on stderr: a bar on a terminal, nothing in a pipe or under -q, and results stay on stdout."""

import pytest
from typer.testing import CliRunner

from nmt_cli.cli import app
from nmt_cli.console import console

runner = CliRunner()
LINES = "the dog sleeps .\n\nthe cat sees the dog .\n"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def as_terminal(monkeypatch):
    """stderr as rich sees a terminal (CliRunner's stderr is not one) that can move its cursor."""
    monkeypatch.setattr(console, "_force_terminal", True)
    monkeypatch.setattr(console, "is_interactive", True)  # rich decides this once, when the Console is made
    monkeypatch.setenv("TERM", "xterm-256color")


@pytest.fixture
def terminal(monkeypatch):
    as_terminal(monkeypatch)


def command(name, trained, tmp_path):
    """Arguments of a command that shows progress, on small inputs."""
    src = tmp_path / "src.en"
    src.write_text(LINES, encoding="utf-8")
    ref = tmp_path / "ref.de"
    ref.write_text("der Hund schläft .\n\ndie Katze sieht den Hund .\n", encoding="utf-8")
    return {
        "translate": ["translate", "-m", trained, src, "-o", tmp_path / "out.de"],
        "tune": [
            "tune",
            "-m",
            trained,
            "--src",
            src,
            "--ref",
            ref,
            "--beam-sweep",
            "1,2",
            "--alpha-sweep",
            "1",
        ],
        "average": ["average", trained, trained, "-o", tmp_path / "avg.nmt"],
        "prepare": ["prepare", "--src", src, "--tgt", ref, "--vocab-size", "30", "-o", tmp_path / "prep"],
    }[name]


SHOWN = {"translate": "translate", "tune": "tune", "average": "average:", "prepare": "prepare:"}


@pytest.mark.parametrize("name", list(SHOWN))
def test_progress_on_a_terminal_only(trained, tmp_path, monkeypatch, name):
    args = command(name, trained, tmp_path)
    piped = invoke(*args)
    assert piped.exit_code == 0, piped.stderr
    assert "\x1b" not in piped.stderr and SHOWN[name] + " " not in piped.stderr.replace("translated", "")
    as_terminal(monkeypatch)
    shown = invoke(*args)
    assert shown.exit_code == 0, shown.stderr
    assert SHOWN[name] in shown.stderr.replace("translated", "") and "\x1b" in shown.stderr
    quiet = invoke(*args, "-q")
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_translate_pipe_stderr_is_the_signature_and_the_count(trained, tmp_path):
    lines = invoke(*command("translate", trained, tmp_path)).stderr.splitlines()
    assert (
        len(lines) == 2 and lines[0].startswith("decode|") and lines[1].startswith("translated 3 lines in ")
    )


def test_results_stay_on_stdout_under_a_bar(trained, tmp_path, terminal):
    src = tmp_path / "src.en"
    src.write_text(LINES, encoding="utf-8")
    result = invoke("translate", "-m", trained, src)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[0] and lines[2]  # 3 lines, none on stderr
    assert "3/3" in result.stderr  # the bar counted every line of the file
    assert lines[0] not in result.stderr

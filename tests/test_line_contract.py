"""The line contract as a property: any lines in give as many lines out, in the same order, whatever the
batch size and the format.

Lines are drawn from all of Unicode (no '\\n', which ends a line), with empty ones, the characters that
other tools break lines at, and long ones that are translated in pieces. Output caps are short and the
model tiny, so each example decodes in a fraction of a second.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from nmt_cli.cli import app

runner = CliRunner()
SEPARATORS = [
    "",
    " ",
    "\r",
    "\t",
    "\x00",
    "\x0b",
    "\x0c",
    "\x1c",
    "\x1e",
    "\x85",
    "\u2028",
    "\u2029",
    "\ufeff",
]
LINE = st.one_of(
    st.sampled_from(SEPARATORS),
    st.text(st.characters(codec="utf-8", blacklist_characters="\n"), max_size=40),
    st.text(st.sampled_from("a dog runs the man .\r\u2028"), min_size=200, max_size=600),  # over the cap
)
BATCH_SIZES = (1, 3, 64)
CHECKED = {"lines": 0}  # lines compared, over every run of every example


def _translate(trained, lines: list[str], fmt: str, batch_size: int) -> list[str]:
    data = "".join(line + "\n" for line in lines)
    result = runner.invoke(
        app,
        ["translate", "-m", str(trained), "--format", fmt, "--batch-size", str(batch_size), "-b", "1"]
        + ["--max-len-a", "0", "--max-len-b", "3", "--max-input-tokens", "30", "-q"],
        input=data.encode("utf-8"),
    )
    assert result.exit_code == 0, result.stderr
    out = result.stdout_bytes.decode("utf-8")
    assert out.endswith("\n") or not out
    return out.split("\n")[:-1]


def _as_read(lines: list[str]) -> list[str]:
    """Each line as nmt reads it: without a '\\r' before the '\\n', or a byte-order mark at the start."""
    read = [line.removesuffix("\r") for line in lines]
    if read:
        read[0] = read[0].removeprefix("\ufeff")
    return read


@settings(
    max_examples=10,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(lines=st.lists(LINE, max_size=12))
@example(lines=[])
@example(lines=["", "", ""])
@example(lines=["\ufeffa\r", "b\r\r", "\u2028", "x" * 2000])
def test_n_lines_in_n_lines_out_in_order(trained, lines):
    records = [json.loads(r) for r in _translate(trained, lines, "jsonl", 3)]
    assert [r["line"] for r in records] == list(range(1, len(lines) + 1))
    assert [r["src"] for r in records] == _as_read(lines)  # in input order, each line whole
    hyps = [r["hyp"].replace("\n", " ") for r in records]
    for batch_size in BATCH_SIZES:
        assert _translate(trained, lines, "text", batch_size) == hyps  # same lines, same order
    CHECKED["lines"] += len(lines) * (1 + len(BATCH_SIZES))

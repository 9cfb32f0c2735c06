"""The README's pipeline, run as written: its "step by step" block, command by command, on the toy corpus.

Only what makes it short is changed: the run directory goes to a temporary folder and the 150-second
budget becomes a few updates. The checks are the README's promises: every command exits 0, translate
writes one line per input line, evaluate prints BLEU with its signature, attention writes the image.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pipeline_commands(readme: str) -> list[str]:
    """The `nmt` commands of the block under "## The pipeline, step by step", continuations joined."""
    section = readme.split("## The pipeline, step by step", 1)[1]
    block = section.split("```", 2)[1]
    return [" ".join(cmd.split()) for cmd in block.replace("\\\n", " ").splitlines() if cmd.strip()]


def test_the_readme_block_is_the_whole_pipeline() -> None:
    commands = pipeline_commands((ROOT / "README.md").read_text(encoding="utf-8"))
    assert [c.split()[1] for c in commands] == ["prepare", "train", "translate", "evaluate", "attention"]


def test_the_readme_pipeline_runs_as_written(tmp_path) -> None:
    commands = pipeline_commands((ROOT / "README.md").read_text(encoding="utf-8"))
    run = tmp_path / "demo"
    for command in commands:
        command = command.replace("runs/demo", str(run)).replace("-o heat.png", f"-o {tmp_path}/heat.png")
        command = re.sub(r"--time-budget \S+", "--max-steps 30 --valid-every 30", command)
        words = shlex.split(command.split(">")[0])
        assert words[0] == "nmt"
        out = subprocess.run(
            [sys.executable, "-m", "nmt_cli", *words[1:]],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, f"{command}\n{out.stderr}"
        if ">" in command:  # translate's stdout redirected, as in the README
            Path(command.split(">")[1].strip()).write_text(out.stdout, encoding="utf-8")
        if words[1] == "evaluate":
            assert re.search(r"BLEU\|nrefs:1\|.*version:[\d.]+ = [\d.]+", out.stdout), out.stdout
    hyp = (run / "test.hyp.de").read_text(encoding="utf-8")
    source = (ROOT / "data/test.en").read_text(encoding="utf-8")
    assert hyp.count("\n") == source.count("\n") == 500
    assert (tmp_path / "heat.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

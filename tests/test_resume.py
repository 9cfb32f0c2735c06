"""Resume through the command line: a stopped, resumed run ends as an uninterrupted one would, and
resume refuses whatever would change the batches or the maths."""

import json
import signal
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from nmt_cli.checkpoint import load_model, load_trainer_state
from nmt_cli.cli import app

runner = CliRunner()


def train(out, train_args, *extra):
    return runner.invoke(app, [str(a) for a in ["train", "-o", out, *train_args, *extra]])


def ok(result):
    assert result.exit_code == 0, result.stderr
    return result


def weights(path):
    return load_model(path).model.state_dict()


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


def run_files(out):
    """Every file under a run directory (its store included) and its bytes."""
    return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def counters(out):
    return load_trainer_state(out / "trainer_state.pt")["counters"]


def train_records(out):
    return [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r["kind"] == "train"]


def test_stop_between_validations_then_resume_equals_an_uninterrupted_run(tmp_path, train_args):
    # plateau with patience 1: every validation without a better BLEU halves the rate. Stopped at 6 (between
    # the validations at 4 and 8), the final save must not count as a validation, or the rate of steps 7-8
    # and the counters differ from a run that went to 8 at once
    plateau = ["--schedule", "plateau", "--lr", "5e-3"]
    with open(tmp_path / "run.toml", "a") as f:
        f.write("plateau_patience = 1\n")
    ok(train(tmp_path / "straight", train_args, *plateau, "--max-steps", "8"))
    ok(train(tmp_path / "halves", train_args, *plateau, "--max-steps", "6"))
    ok(train(tmp_path / "halves", train_args, *plateau, "--max-steps", "8", "--resume"))
    assert_same_weights(tmp_path / "straight" / "last.nmt", tmp_path / "halves" / "last.nmt")
    a, b = counters(tmp_path / "straight"), counters(tmp_path / "halves")
    for name in ("step", "best_bleu", "best_step", "bad_validations", "plateau_scale", "batch_in_epoch"):
        assert a[name] == b[name], name
    # the same batches, each once, with the same losses and rates
    drop = ("wall", "tok_s")
    strip = [{k: v for k, v in r.items() if k not in drop} for r in train_records(tmp_path / "straight")]
    assert strip == [
        {k: v for k, v in r.items() if k not in drop} for r in train_records(tmp_path / "halves")
    ]


def test_stop_by_epochs_then_resume_equals_an_uninterrupted_run(tmp_path, train_args):
    # the epoch limit stops between validations too (about 0.04 epoch is 5 of this corpus's ~110 batches)
    ok(train(tmp_path / "straight", train_args, "--max-steps", "8"))
    first = ok(train(tmp_path / "halves", train_args, "--epochs", "0.04"))
    assert "stopped\tepochs" in first.stdout and counters(tmp_path / "halves")["step"] % 4 != 0
    ok(train(tmp_path / "halves", train_args, "--max-steps", "8", "--epochs", "0", "--resume"))
    assert_same_weights(tmp_path / "straight" / "last.nmt", tmp_path / "halves" / "last.nmt")


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--batch-tokens", "500", "batch_tokens (saved 400, now 500)"),
        ("--seed", "7", "seed (saved 1234, now 7)"),
        ("--weight-decay", "0.01", "weight_decay (saved 0.0, now 0.01)"),
        ("--lr", "0.001", "lr (saved 0.005, now 0.001)"),
        ("--valid-every", "2", "valid_every (saved 4, now 2)"),
    ],
)
def test_resume_refuses_a_different_training_config(tmp_path, train_args, flag, value, expected):
    ok(train(tmp_path / "r", train_args, "--max-steps", "4"))
    before = run_files(tmp_path / "r")
    result = train(tmp_path / "r", train_args, "--max-steps", "8", flag, value, "--resume")
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert line.startswith("nmt: error: ") and "\n" not in line
    assert f"cannot resume: train config differs in {expected}" in line
    assert run_files(tmp_path / "r") == before


def test_resume_refuses_max_len_named_in_the_run_file(tmp_path, train_args):
    ok(train(tmp_path / "r", train_args, "--max-steps", "4"))
    with open(tmp_path / "run.toml", "a") as f:
        f.write("max_len = 50\n")
    result = train(tmp_path / "r", train_args, "--max-steps", "8", "--resume")
    assert result.exit_code == 1
    assert "train config differs in max_len (saved 100, now 50)" in result.stderr


def test_resume_refuses_another_corpus(tmp_path, train_args, corpus):
    ok(train(tmp_path / "r", train_args, "--max-steps", "4"))
    other = tmp_path / "other.en"
    lines = Path(corpus.train_src).read_text(encoding="utf-8").splitlines()
    other.write_text("\n".join(lines[1:] + lines[:1]) + "\n", encoding="utf-8")  # same lines, rotated
    args = [other if a == corpus.train_src else a for a in train_args]
    result = train(tmp_path / "r", args, "--max-steps", "8", "--resume")
    assert result.exit_code == 1
    assert "the training corpus differs: train_src" in result.stderr
    assert str(other) in result.stderr


def test_resume_allows_the_limits_and_logging_to_change(tmp_path, train_args):
    ok(train(tmp_path / "r", train_args, "--max-steps", "4"))
    result = train(
        tmp_path / "r", train_args, "--max-steps", "6", "--log-every", "2", "--time-budget", "1h",
        "--patience", "3", "--keep-last", "1", "--resume",
    )  # fmt: skip
    assert ok(result).stdout.count("steps\t6") == 1


def test_help_lists_what_may_change_on_resume():
    text = runner.invoke(app, ["train", "--help"], terminal_width=200).stdout
    for flag in ("--max-steps", "--epochs", "--time-budget", "--log-every"):
        assert flag in text.split("--resume", 1)[1].split("--overwrite", 1)[0], flag


def test_save_every_minutes_after_resume_does_not_save_at_every_step(tmp_path, train_args, monkeypatch):
    # a resumed run's clock starts at the earlier runs' wall time (here set to 10 minutes): the snapshot
    # timer must start from there, not fire at every step until it catches up with it
    import nmt_cli.train as train_module

    ok(train(tmp_path / "r", train_args, "--max-steps", "4"))
    state = load_trainer_state(tmp_path / "r" / "trainer_state.pt")
    state["counters"]["wall"] = 600.0
    torch.save(state, tmp_path / "r" / "trainer_state.pt")
    saved = []
    real = train_module.save_model
    monkeypatch.setattr(
        train_module, "save_model", lambda path, *a, **k: (saved.append(path.name), real(path, *a, **k))
    )
    ok(train(tmp_path / "r", train_args, "--max-steps", "8", "--save-every-minutes", "1", "--resume"))
    assert len(saved) <= 1, saved  # at most one minute boundary is crossed in this short run


def test_overwrite_checks_every_argument_before_deleting(tmp_path, train_args):
    ok(train(tmp_path / "r", train_args, "--max-steps", "4"))
    kept = run_files(tmp_path / "r")
    typo = [tmp_path / "typo.en" if a == train_args[1] else a for a in train_args]
    result = train(tmp_path / "r", typo, "--max-steps", "4", "--overwrite")
    assert result.exit_code == 1 and "typo.en" in result.stderr
    assert run_files(tmp_path / "r") == kept


def test_a_stray_step_file_does_not_break_keep_last(tmp_path, train_args):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "step-best.nmt").write_bytes(b"mine")
    ok(train(tmp_path / "r", train_args, "--max-steps", "12", "--keep-last", "2"))
    names = sorted(p.name for p in (tmp_path / "r").glob("step-*.nmt"))
    assert names == ["step-12.nmt", "step-8.nmt", "step-best.nmt"]
    assert (tmp_path / "r" / "step-best.nmt").read_bytes() == b"mine"


def test_sigint_saves_and_says_how_to_resume(tmp_path, train_args, monkeypatch):
    # SIGINT arrives during update 3: that update ends, the state is saved, the exit code is 130
    import os

    import nmt_cli.train as train_module

    real, calls = train_module.train_step, []

    def step(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)

    monkeypatch.setattr(train_module, "train_step", step)
    # Python's handler, or SIG_IGN in a job started in the background from a non-interactive shell
    before = signal.getsignal(signal.SIGINT)
    result = train(tmp_path / "r", train_args, "--max-steps", "8")
    assert result.exit_code == 130, result.stderr
    assert "--resume" in result.stderr.strip().splitlines()[-1]
    assert counters(tmp_path / "r")["step"] == 3
    monkeypatch.setattr(train_module, "train_step", real)
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    ok(train(tmp_path / "r", train_args, "--max-steps", "8", "--resume"))
    ok(train(tmp_path / "straight", train_args, "--max-steps", "8"))
    assert_same_weights(tmp_path / "straight" / "last.nmt", tmp_path / "r" / "last.nmt")

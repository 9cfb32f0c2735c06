"""Training under torchrun: two gloo processes on the CPU, as `torchrun --nproc-per-node 2` runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from nmt_cli import distributed
from nmt_cli.cli import app
from nmt_cli.cmd_train import _without_nproc
from nmt_cli.data import collate
from nmt_cli.run_files import run_dir_lock
from nmt_cli.update import Place, build_optimizer, place_model, train_step
from tests import ddp_worker
from tests.conftest import ROOT

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
TINY = [
    *["--emb-size", "32", "--encoder-hidden", "32", "--decoder-hidden", "64", "--dropout", "0"],
    "--no-input-feeding",
    *["--batch-tokens", "400", "--log-every", "1", "--quiet"],
]


def torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *args]
    return subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def nmt(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "nmt_cli", *args]
    return subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_two_ranks_end_equal_and_match_one_process_on_the_same_global_batches(tmp_path):
    done = torchrun(str(ROOT / "tests" / "ddp_worker.py"), str(tmp_path), "feeding")
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["batches"] != ranks[1]["batches"]  # each rank trained on its own share
    # the CPU swaps run under DDP too (their backward goes through autograd, so DDP's hooks see it)
    expected_kernels = "plain" if os.environ.get("NMT_PLAIN") == "1" else "cpu"
    assert ranks[0]["kernels"] == ranks[1]["kernels"] == expected_kernels
    for name, weight in ranks[0]["state"].items():
        assert torch.equal(weight, ranks[1]["state"][name]), name
    # one process, each update on the union of the two ranks' batches of that step
    model_cfg, cfg = ddp_worker.configs(input_feeding=True)
    torch.manual_seed(0)
    model, _, _ = place_model(model_cfg, cfg, Place())
    optimizer = build_optimizer(model, cfg)
    data = ddp_worker.examples()
    for step in range(ddp_worker.STEPS):
        both = ranks[0]["batches"][step] + ranks[1]["batches"][step]
        train_step(model, optimizer, collate([data[i] for i in both]), cfg, cfg.lr)
    for name, weight in model.state_dict().items():
        assert torch.allclose(weight, ranks[0]["state"][name], atol=2e-5), name


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, corpus, subword) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """`nmt train --nproc 2` for 6 updates, validating every 3."""
    d = tmp_path_factory.mktemp("ddp")
    spm = d / "spm.model"
    subword.save(spm)
    out = d / "run"
    data = ["--src", corpus.train_src, "--tgt", corpus.train_tgt, "--dev-src", corpus.dev_src]
    data += ["--dev-tgt", corpus.dev_tgt, "--spm", str(spm), "-o", str(out), *TINY]
    done = nmt("train", *data, "--max-steps", "6", "--valid-every", "3", "--nproc", "2")
    return out, spm, done


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_only_rank_0_writes_and_the_log_names_the_world(ddp_run):
    out, _, done = ddp_run
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("model\t") == 1 and "steps\t6\n" in done.stdout  # one summary, rank 0's
    log = records(out)
    assert log[0] == {**log[0], "kind": "start", "world_size": 2, "backend": "gloo", "device": "cpu"}
    # each record once: a second writer would have doubled them
    assert [r["step"] for r in log if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in log if r["kind"] == "valid"] == [3, 6]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".lock", "spm.model", "store", "log.jsonl", "model.nmt", "last.nmt", "trainer_state.pt"]
    )
    state = torch.load(out / "trainer_state.pt", weights_only=True)
    assert state["world_size"] == 2
    info = CliRunner().invoke(app, ["info", str(out / "last.nmt")])
    assert info.exit_code == 0 and "world_size: 2, gloo" in info.stdout


def test_resume_under_ddp_continues_and_one_process_is_refused(ddp_run, corpus):
    out, spm, first = ddp_run
    assert first.returncode == 0, first.stderr[-3000:]
    data = ["--src", corpus.train_src, "--tgt", corpus.train_tgt, "--dev-src", corpus.dev_src]
    data += ["--dev-tgt", corpus.dev_tgt, "--spm", str(spm), "-o", str(out), *TINY, "--resume"]
    alone = CliRunner().invoke(app, ["train", *data, "--max-steps", "9", "--valid-every", "3"])
    assert alone.exit_code == 1
    assert "cannot resume: trained with world size 2, now 1" in alone.stderr
    done = nmt("train", *data, "--max-steps", "9", "--valid-every", "3", "--nproc", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    log = records(out)
    starts = [r for r in log if r["kind"] == "start"]
    assert [r["step"] for r in starts] == [0, 6]
    assert [r["step"] for r in log if r["kind"] == "train"] == list(range(1, 10))


def test_a_time_budget_ends_both_ranks(tmp_path, corpus, subword):
    spm = tmp_path / "spm.model"
    subword.save(spm)
    data = [
        "--src",
        corpus.train_src,
        "--tgt",
        corpus.train_tgt,
        "--spm",
        str(spm),
        "-o",
        str(tmp_path / "r"),
    ]
    done = nmt("train", *data, *TINY, "--time-budget", "15s", "--valid-every", "100000", "--nproc", "2")
    assert done.returncode == 0, done.stderr[-3000:]  # torchrun reports 0 only when both ranks ended well
    assert "stopped\ttime-budget" in done.stdout
    assert (tmp_path / "r" / "model.nmt").exists()


def test_a_second_training_into_a_held_run_directory_is_refused(tmp_path, corpus):
    out = tmp_path / "run"
    args = ["train", "--src", corpus.train_src, "--tgt", corpus.train_tgt, "-o", str(out), "--max-steps", "1"]
    with run_dir_lock(out):
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "another training is writing this run directory" in result.stderr
    assert not (out / "model.nmt").exists()


def test_nproc_is_left_out_of_what_torchrun_runs():
    argv = ["train", "--nproc", "2", "--src", "a", "--nproc=3", "-o", "r"]
    assert _without_nproc(argv) == ["train", "--src", "a", "-o", "r"]


def test_sigterm_stops_both_ranks_at_one_step_with_the_resume_state_saved(tmp_path, corpus, subword):
    """SIGTERM to `nmt train --nproc 2` reaches each rank once (through torchrun); whichever rank hears
    it, all leave at the same step, and rank 0 saves that step's resume state."""
    spm, out = tmp_path / "spm.model", tmp_path / "r"
    subword.save(spm)
    data = ["--src", corpus.train_src, "--tgt", corpus.train_tgt, "--spm", str(spm), "-o", str(out)]
    command = [sys.executable, "-m", "nmt_cli", "train", *data, *TINY, "--max-steps", "100000"]
    command += ["--valid-every", "100000", "--nproc", "2"]
    run = subprocess.Popen(
        command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    deadline = time.monotonic() + 240
    while not (out / "log.jsonl").exists() or not any(r["kind"] == "train" for r in records(out)):
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()
        time.sleep(0.2)
    run.send_signal(signal.SIGTERM)
    stdout, stderr = run.communicate(timeout=240)
    assert run.returncode != 0
    assert stdout.count("stopped\tSIGTERM") == 1, stderr[-3000:]
    steps = [r["step"] for r in records(out) if r["kind"] == "train"]
    state = torch.load(out / "trainer_state.pt", weights_only=True)
    assert state["counters"]["step"] == steps[-1] == int(stdout.split("steps\t")[1].split()[0])
    assert "to continue, run the same command with --resume" in stderr


@pytest.mark.parametrize(
    ("code", "status", "stderr"),
    [(None, 0, "done\n"), (3, 3, "done\n"), ("nmt: error: x", 1, "done\nnmt: error: x\n")],
)
def test_a_gloo_rank_leaves_with_its_exit_status_and_everything_it_wrote(code, status, stderr):
    # leave() skips the interpreter's shutdown, which flushes the streams: through pipes (block-buffered)
    # the lines would be lost unless it flushes them itself
    script = (
        "import logging, sys\n"
        "from nmt_cli import distributed\n"
        "logging.basicConfig(stream=sys.stderr, format='%(message)s')\n"
        "print('model\\tm.nmt')\n"
        "logging.getLogger('x').warning('done')\n"
        f"distributed.leave({code!r})\n"
        "print('not reached')\n"
    )
    buffered = {k: v for k, v in ENV.items() if k != "PYTHONUNBUFFERED"}  # as a pipe is by default
    done = subprocess.run(
        [sys.executable, "-c", script], env=buffered, capture_output=True, text=True, cwd=ROOT
    )
    assert (done.returncode, done.stdout, done.stderr) == (status, "model\tm.nmt\n", stderr)


def test_only_a_process_that_joined_gloo_leaves_at_once():
    assert not distributed.must_leave_at_once()  # this one: the interpreter's own shutdown

"""Crash safety: `nmt train` killed with SIGKILL at many moments, resumed each time, ends exactly as an
uninterrupted run, and every batch is trained on once."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from tests.test_resume import assert_same_weights, train_records

HERE = Path(__file__).resolve().parent

# (moment, at its n-th occurrence in that process, what the resume state holds afterwards); the run
# validates and saves every 4 updates and stops at 12. Counts restart in each resumed process.
CHAIN = [
    ("before-update", 6, 4),  # updates 5 done, unsaved: redone
    ("torn-state", 1, 4),  # inside the save at 8: half of the new trainer_state.pt written
    ("before-rename:trainer_state.pt", 1, 4),  # the new state complete, not yet in place
    ("after-rename:trainer_state.pt", 1, 8),  # just after: the save at 8 is done
    ("torn-log", 2, 8),  # step 10's log line cut in half
    ("sigterm-before-update", 2, 10),  # SIGTERM: update 10 ends, its state is saved, exit 143
    ("after-update", 2, 10),  # update 12 done, killed before its validation
    ("before-rename:last.nmt", 1, 10),  # inside the save at 12
]


def run_plan(tmp_path, runs):
    """The runs, in order, each in a process of its own with as many threads as this one -> statuses."""
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(runs))
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    done = subprocess.run(
        [sys.executable, str(HERE / "kill_points.py"), str(plan)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])  # the runs' own stdout comes before


def test_killed_at_any_moment_and_resumed_equals_an_uninterrupted_run(tmp_path, train_args):
    def run(point, n, out, *extra, keep=""):
        args = ["train", "-o", out, *train_args, "--max-steps", "12", *extra]
        log = tmp_path / f"stderr-{len(runs)}.txt"
        return dict(point=point, n=n, args=[str(a) for a in args], log=str(log), keep=str(keep))

    out, runs = tmp_path / "killed", []
    runs.append(run("none", 0, tmp_path / "straight"))
    for i, (point, n, _) in enumerate(CHAIN):
        runs.append(run(point, n, out, *(["--resume"] if i else []), keep=tmp_path / f"state-{i}.pt"))
    runs.append(run("none", 0, out, "--resume"))
    statuses = run_plan(tmp_path, runs)
    logs = [Path(r["log"]).read_text() for r in runs]

    assert statuses[0] == 0 and statuses[-1] == 0, logs
    kills = 0
    for i, (point, _, saved_step) in enumerate(CHAIN):
        if point.startswith("sigterm"):
            assert statuses[i + 1] == 143, logs[i + 1]
            assert "run the same command with --resume" in logs[i + 1].splitlines()[-1]
        else:
            assert statuses[i + 1] == -signal.SIGKILL, (point, statuses[i + 1], logs[i + 1])
            kills += 1
        state = torch.load(tmp_path / f"state-{i}.pt", weights_only=True)
        assert state["counters"]["step"] == saved_step, point
    assert kills == 7
    for name in ("last.nmt", "model.nmt"):
        assert_same_weights(tmp_path / "straight" / name, out / name)
    # every batch once, in the uninterrupted run's order, with its losses
    straight, killed = train_records(tmp_path / "straight"), train_records(out)
    assert [r["step"] for r in killed] == list(range(1, 13))
    assert [r["batch"] for r in killed] == [r["batch"] for r in straight]
    assert [(r["loss"], r["lr"]) for r in killed] == [(r["loss"], r["lr"]) for r in straight]
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]

"""Runs of `nmt`, each with one signal planted at a chosen moment (for tests/test_crash.py).

usage: python tests/kill_points.py PLAN.json

PLAN.json lists the runs, in order: {"point": POINT, "n": N, "args": [...], "log": path for stderr,
"keep": path to copy trainer_state.pt to afterwards}. Each run is a child forked from this process,
which imports torch and nmt once (a run then starts in milliseconds, not seconds) and runs no torch
op itself, so the children start from a clean thread pool. Prints each run's wait status as JSON:
the exit code, or minus the signal that ended it.

POINT, at its N-th occurrence in the run (none: no signal):
  before-update, after-update   SIGKILL just before or after an update (train_step)
  torn-state                    half of trainer_state.pt's bytes reach the temporary file, then SIGKILL
  before-rename:NAME            SIGKILL when the temporary file of NAME is written, before its rename
  after-rename:NAME             SIGKILL just after NAME was renamed into place
  torn-log                      half of a log.jsonl line is written, then SIGKILL
  sigterm-before-update         SIGTERM to itself before an update, which then goes on
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def plant(point: str, n: int) -> None:
    calls = [0]

    def hit() -> bool:
        calls[0] += 1
        return calls[0] == n

    kind, _, name = point.partition(":")
    if kind in ("before-update", "after-update", "sigterm-before-update"):
        import nmt_cli.train as train

        real_step = train.train_step

        def step(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            now = hit()
            if now and kind == "before-update":
                die()
            if now and kind == "sigterm-before-update":
                os.kill(os.getpid(), signal.SIGTERM)
            loss = real_step(*args, **kwargs)
            if now and kind == "after-update":
                die()
            return loss

        train.train_step = step
    elif kind == "torn-state":
        import nmt_cli.checkpoint as checkpoint

        real_save = checkpoint.torch.save

        def save(obj, f, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            if not hit():
                return real_save(obj, f, *args, **kwargs)
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            f.flush()
            die()

        checkpoint.torch.save = save
    elif kind in ("before-rename", "after-rename"):
        real_replace = os.replace

        def replace(src, dst):  # noqa: ANN001, ANN202
            now = Path(dst).name == name and hit()
            if now and kind == "before-rename":
                die()
            real_replace(src, dst)
            if now:
                die()

        os.replace = replace
    elif kind == "torn-log":
        import nmt_cli.run_files as run_files

        real_append = run_files.append_jsonl

        def append(path, record):  # noqa: ANN001, ANN202
            if not hit():
                return real_append(path, record)
            with open(path, "a", encoding="utf-8") as f:
                line = json.dumps(record)
                f.write(line[: len(line) // 2])
                f.flush()
                die()

        run_files.append_jsonl = append
    elif kind != "none":
        raise SystemExit(f"unknown point {point!r}")


def run_child(run: dict) -> None:
    """In the forked child: plant the signal, run the command, exit without returning."""
    import nmt_cli.cmd_train
    from nmt_cli.cli import app

    nmt_cli.cmd_train.PROCESS_START = time.time()  # the run's clock starts with its process
    code = 1
    try:
        with open(run["log"], "w") as log:
            os.dup2(log.fileno(), 2)
        plant(run["point"], run["n"])
        app(run["args"], prog_name="nmt")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main(plan_path: str) -> None:
    import torch  # noqa: F401 - imported once here, so that the children need not
    import torch._dynamo  # noqa: F401 - what building the optimizer imports: seconds

    import nmt_cli.cli  # noqa: F401
    import nmt_cli.train  # noqa: F401

    statuses = []
    for run in json.loads(Path(plan_path).read_text()):
        pid = os.fork()
        if pid == 0:
            run_child(run)
        _, status = os.waitpid(pid, 0)
        statuses.append(os.waitstatus_to_exitcode(status))
        state = Path(run["args"][run["args"].index("-o") + 1]) / "trainer_state.pt"
        if run.get("keep") and state.exists():
            shutil.copyfile(state, run["keep"])
    print(json.dumps(statuses))


if __name__ == "__main__":
    main(sys.argv[1])

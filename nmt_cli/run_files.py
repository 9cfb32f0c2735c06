"""What a training run keeps in its directory: counters, the resume state, checkpoints and log.jsonl."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import torch

from nmt_cli.checkpoint import load_trainer_state, save_model, save_trainer_state
from nmt_cli.config import ModelConfig, TrainConfig, from_json, resume_differences, to_json
from nmt_cli.console import console
from nmt_cli.errors import ConfigError, InputError
from nmt_cli.loss import Validation
from nmt_cli.model import Seq2Seq
from nmt_cli.subword import Subword
from nmt_cli.textio import append_jsonl, atomic_write
from nmt_cli.vectors import Coverage, PieceVectors

log = logging.getLogger(__name__)
STEP_FILE = re.compile(r"step-(\d+)\.nmt")  # step-best.nmt and other names of the user's are left alone
MINUTE_FILE = re.compile(r"min-(\d+)\.nmt")
TEMP_FILE = re.compile(r"\..+\.\d+\.tmp")  # textio.atomic_path's, left by a process killed while saving


@dataclass
class Counters:
    """Everything that moves during training and must survive a resume."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    tokens: int = 0
    wall: float = 0.0  # seconds spent up to the last save, earlier runs of a resumed training included
    # the schedule's view, moved only by the validations every valid_every steps (patience, plateau)
    best_bleu: float = -1.0
    best_step: int = 0
    bad_validations: int = 0
    plateau_scale: float = 1.0
    # model.nmt's dev BLEU and step: also an extra validation at a stop between two can replace it
    kept_bleu: float = -1.0
    kept_step: int = 0


class RunIdentity(NamedTuple):
    """What a resumed run must share with the run it continues: the same batches, the same maths."""

    model_cfg: ModelConfig
    train_cfg: TrainConfig
    data: dict[str, dict[str, Any]]  # file_facts by DataConfig field, empty fields left out
    subword: str  # sha256 prefix of the SentencePiece model
    world_size: int = 1  # processes under torchrun: each rank's data position counts its own batches


def subword_digest(subword: Subword) -> str:
    return hashlib.sha256(subword.to_bytes()).hexdigest()[:16]


@contextmanager
def run_dir_lock(out: Path) -> Iterator[None]:
    """Hold OUT/.lock while training into OUT: a second training (another torchrun group, or a plain
    process) into the same directory is refused at once instead of mixing its files with this one's."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        f = open(out / ".lock", "a+")  # noqa: SIM115 - closed below
    except OSError as e:  # a read-only or unwritable place: the one-line error of any failed write
        raise InputError(f"cannot write: {e.strerror or e}", str(out / ".lock")) from None
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "?"
            raise ConfigError(
                f"another training is writing this run directory (pid {holder})", str(out)
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def file_facts(path: str) -> dict[str, object]:
    data = Path(path).read_bytes()
    return {
        "path": path,
        "sha256": hashlib.sha256(data).hexdigest()[:16],
        "lines": data.count(b"\n"),
        "bytes": len(data),
    }


def restore(path: Path, model: Seq2Seq, optimizer: torch.optim.Optimizer, now: RunIdentity) -> Counters:
    """Weights, optimizer, RNG and counters of an earlier run; refused when anything that decides the
    batches or the maths differs (world size, model, training config, corpus, dev set, subword model)."""
    state = load_trainer_state(path)
    _check_same_run(state, now, str(path))
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    saved = state["counters"]
    known = {f.name for f in fields(Counters)}
    c = Counters(**{k: v for k, v in saved.items() if k in known})
    if "kept_bleu" not in saved:  # written before model.nmt's score was kept apart
        c.kept_bleu, c.kept_step = c.best_bleu, c.best_step
    return c


def _check_same_run(state: dict[str, Any], now: RunIdentity, path: str) -> None:
    saved_world = int(state.get("world_size", 1))  # written before torchrun training: one process
    if saved_world != now.world_size:
        raise ConfigError(
            f"cannot resume: trained with world size {saved_world}, now {now.world_size}; "
            f"resume with {_launch_hint(saved_world)}",
            path,
        )
    saved_model = from_json(ModelConfig, state["model_config"])
    for name, value in asdict(now.model_cfg).items():
        if getattr(saved_model, name) != value:
            raise ConfigError(
                f"cannot resume: model config differs in {name} "
                f"(saved {getattr(saved_model, name)!r}, now {value!r})",
                path,
            )
    for name, saved, value in resume_differences(json.loads(state["train_config"]), now.train_cfg):
        raise ConfigError(
            f"cannot resume: train config differs in {name} (saved {saved!r}, now {value!r})", path
        )
    if "data" not in state:  # written before corpus digests were kept
        log.warning("%s holds no corpus digests: cannot check that the corpus is the same", path)
        return
    for name in ("train_src", "train_tgt", "dev_src", "dev_tgt"):
        before, after = state["data"].get(name), now.data.get(name)
        if (before or {}).get("sha256") != (after or {}).get("sha256"):
            what = "training corpus" if name.startswith("train") else "dev set"
            raise ConfigError(
                f"cannot resume: the {what} differs: {name} was {_describe(before)}, now {_describe(after)}",
                path,
            )
    if state["subword"] != now.subword:
        raise ConfigError(
            f"cannot resume: the subword model differs (saved sha256 {state['subword']}, now {now.subword})",
            path,
        )


def _launch_hint(world_size: int) -> str:
    return (
        "one process (no torchrun)"
        if world_size == 1
        else f"torchrun --nproc-per-node {world_size} (or --nproc)"
    )


def _describe(facts: dict[str, Any] | None) -> str:
    return "none" if not facts else f"{facts['path']} (sha256 {facts['sha256']}, {facts['lines']} lines)"


def update_best(c: Counters, v: Validation | None, cfg: TrainConfig, scheduled: bool = True) -> bool:
    """Record a validation in the counters; True when its model becomes model.nmt (best dev BLEU so far).

    Only scheduled validations (every valid_every steps) move best, patience and the plateau scale: an
    extra one where a limit stops the run between two would make a resumed run differ from an
    uninterrupted one. Any validation may replace model.nmt with a better model.
    """
    if v is None or v.bleu is None:
        return True  # nothing to compare: the latest model is the one to keep
    if scheduled and v.bleu > c.best_bleu:
        c.best_bleu, c.best_step, c.bad_validations = v.bleu, c.step, 0
    elif scheduled:
        c.bad_validations += 1
        if cfg.schedule == "plateau" and c.bad_validations % cfg.plateau_patience == 0:
            c.plateau_scale *= cfg.plateau_factor
    keep = v.bleu > c.kept_bleu
    if keep:
        c.kept_bleu, c.kept_step = v.bleu, c.step
    return keep


def record_start(out: Path, c: Counters, facts: dict[str, Any]) -> None:
    """The first record of a run (and of each resumed part): how it runs, e.g. world_size and backend."""
    append_jsonl(out / "log.jsonl", {"kind": "start", "step": c.step, **facts})


def record_train(
    out: Path, c: Counters, loss: float, lr: float, tok_s: float, wall: float, epochs: float, quiet: bool
) -> None:
    """One report line to log.jsonl, and to stderr unless quiet; loss: the window's mean per token."""
    ppl = round(math.exp(min(loss, 50.0)), 2)
    append_jsonl(
        out / "log.jsonl",
        {
            "kind": "train",
            "step": c.step,
            "epoch": round(epochs, 4),
            "wall": round(wall, 2),
            "loss": round(loss, 4),
            "ppl": ppl,
            "lr": lr,
            "tok_s": round(tok_s, 1),
            "tokens": c.tokens,
            "batch": [c.epoch, c.batch_in_epoch - 1],  # which batch of which epoch: each is seen once
        },
    )
    if not quiet:
        console.print(
            f"step {c.step:>6} | epoch {epochs:5.2f} | loss {loss:6.3f} | ppl {ppl:8.2f} | "
            f"lr {lr:.2e} | {tok_s:7.0f} tok/s | {wall:6.0f}s"
        )


def record_validation(
    out: Path, c: Counters, v: Validation, improved: bool, wall: float, quiet: bool
) -> None:
    """One validation line; best_bleu is model.nmt's."""
    append_jsonl(
        out / "log.jsonl",
        {
            "kind": "valid",
            "step": c.step,
            "wall": round(wall, 1),
            "dev_loss": round(v.loss, 4),
            "dev_ppl": round(v.ppl, 2),
            "dev_bleu": v.bleu,
            "best_bleu": max(c.kept_bleu, 0.0),
        },
    )
    if not quiet:
        bleu = "" if v.bleu is None else f" | dev BLEU {v.bleu:5.2f}{' (best)' if improved else ''}"
        console.print(f"[bold]validate[/] step {c.step} | dev loss {v.loss:.3f} | dev ppl {v.ppl:.2f}{bleu}")


def record_vectors(out: Path, side: str, path: str, found: PieceVectors, cov: Coverage, frozen: bool) -> None:
    """The coverage of one vector file, as a log.jsonl line (kind: vectors)."""
    append_jsonl(
        out / "log.jsonl",
        {
            "kind": "vectors",
            "side": side,
            "path": path,
            "read": found.read,
            "dim": found.vectors.shape[1],
            "pieces": cov.pieces,
            "vocabulary": cov.vocabulary,
            "identical": found.exact,
            "word_initial": found.stripped,
            "tokens": cov.tokens,
            "total_tokens": cov.total_tokens,
            "token_coverage": round(cov.tokens / cov.total_tokens, 4) if cov.total_tokens else 0.0,
            "uncovered": [[piece, n] for piece, n in cov.uncovered],
            "frozen": frozen,
        },
    )


def save_run(
    out: Path,
    model: Seq2Seq,
    optimizer: torch.optim.Optimizer,
    subword: Subword,
    c: Counters,
    facts: dict[str, Any],
    improved: bool,
    cfg: TrainConfig,
    world_size: int = 1,
) -> None:
    """last.nmt, model.nmt when improved, step-N.nmt (the last keep_last), then the resume state.

    The resume state goes last: it is the commit point. Killed before it is replaced, a resumed run
    redoes the steps since the previous one and writes the same model files again.
    """
    save_model(out / "last.nmt", model, subword, facts)
    if improved:
        save_model(out / "model.nmt", model, subword, facts)
    if cfg.keep_last:
        save_model(out / f"step-{c.step}.nmt", model, subword, facts)
        for old in sorted(_numbered(out, STEP_FILE), key=lambda p: _number(p, STEP_FILE))[: -cfg.keep_last]:
            old.unlink()
    save_trainer_state(
        out / "trainer_state.pt",
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "counters": asdict(c),
            "torch_rng": torch.get_rng_state(),
            "model_config": to_json(model.cfg),
            "train_config": to_json(cfg),
            "data": facts.get("data", {}),
            "subword": subword_digest(subword),
            "world_size": world_size,
            **({"cuda_rng": torch.cuda.get_rng_state_all()} if torch.cuda.is_initialized() else {}),
        },
    )


def _numbered(out: Path, pattern: re.Pattern[str]) -> list[Path]:
    return [p for p in out.iterdir() if pattern.fullmatch(p.name)]


def _number(path: Path, pattern: re.Pattern[str]) -> int:
    match = pattern.fullmatch(path.name)
    assert match is not None
    return int(match.group(1))


def prepare_run_dir(out: Path, resume_step: int | None, subword: Subword) -> None:
    """Make out ready for the loop, once every argument has been checked (nothing is lost to a typo).

    A fresh run (resume_step None) clears what an earlier run left; a resumed run drops the log lines of
    steps after the resume state's, which the killed or stopped process did and this one redoes.
    """
    out.mkdir(parents=True, exist_ok=True)
    for leftover in _numbered(out, TEMP_FILE):
        leftover.unlink(missing_ok=True)
    if resume_step is None:
        for stale in [out / "log.jsonl", out / "trainer_state.pt"]:
            stale.unlink(missing_ok=True)
        for stale in _numbered(out, STEP_FILE) + _numbered(out, MINUTE_FILE):
            stale.unlink()
    else:
        _trim_log(out / "log.jsonl", resume_step)
    subword.save(out / "spm.model")


def _trim_log(path: Path, step: int) -> None:
    """Keep the log lines up to step; a line cut short by a kill is dropped too."""
    if not path.exists():
        return
    kept = []
    for line in path.read_bytes().splitlines(keepends=True):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if line.endswith(b"\n") and record.get("step", 0) <= step:
            kept.append(line)
    with atomic_write(path) as f:
        f.write(b"".join(kept))

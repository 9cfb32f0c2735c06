"""What a training run keeps in its directory: counters, the resume state, checkpoints and log.jsonl."""

from __future__ import annotations

import fcntl
import hashlib
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from nmt_cli.checkpoint import load_trainer_state, save_model, save_trainer_state
from nmt_cli.config import ModelConfig, TrainConfig, from_json, to_json
from nmt_cli.console import console
from nmt_cli.distributed import World
from nmt_cli.errors import ConfigError
from nmt_cli.loss import Validation
from nmt_cli.model import Seq2Seq
from nmt_cli.subword import Subword
from nmt_cli.textio import append_jsonl


@dataclass
class Counters:
    """Everything that moves during training and must survive a resume."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    tokens: int = 0
    wall: float = 0.0  # seconds spent up to the last save, earlier runs of a resumed training included
    best_bleu: float = -1.0
    best_step: int = 0
    bad_validations: int = 0
    plateau_scale: float = 1.0


@contextmanager
def run_dir_lock(out: Path) -> Iterator[None]:
    """Hold OUT/.lock while training into OUT: a second training (another torchrun group, or a plain
    process) into the same directory is refused at once instead of mixing its files with this one's."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / ".lock"
    with open(path, "a+") as f:
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


def restore(
    path: Path, model: Seq2Seq, optimizer: torch.optim.Optimizer, model_cfg: ModelConfig, world: World
) -> Counters:
    """Weights, optimizer, RNG and counters of an earlier run; a different model config is refused, and so
    is another world size (the data position counts batches of one rank's share)."""
    state = load_trainer_state(path)
    saved_world = int(state.get("world_size", 1))
    if saved_world != world.world_size:
        raise ConfigError(
            f"cannot resume: trained with world size {saved_world}, now {world.world_size}; "
            f"resume with {_launch_hint(saved_world)}",
            str(path),
        )
    saved = from_json(ModelConfig, state["model_config"])
    for name, value in asdict(model_cfg).items():
        if getattr(saved, name) != value:
            raise ConfigError(
                f"cannot resume: model config differs in {name} "
                f"(saved {getattr(saved, name)!r}, now {value!r})",
                str(path),
            )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return Counters(**state["counters"])


def _launch_hint(world_size: int) -> str:
    return (
        "one process (no torchrun)"
        if world_size == 1
        else f"torchrun --nproc-per-node {world_size} (or --nproc)"
    )


def update_best(c: Counters, v: Validation | None, cfg: TrainConfig) -> bool:
    """Record a validation in the counters (best, patience, plateau); True when it is the best so far."""
    if v is None or v.bleu is None:
        return True  # nothing to compare: the latest model is the one to keep
    improved = v.bleu > c.best_bleu
    if improved:
        c.best_bleu, c.best_step, c.bad_validations = v.bleu, c.step, 0
    else:
        c.bad_validations += 1
        if cfg.schedule == "plateau" and c.bad_validations % cfg.plateau_patience == 0:
            c.plateau_scale *= cfg.plateau_factor
    return improved


def record_start(out: Path, c: Counters, facts: dict[str, Any]) -> None:
    """The first record of a run (and of each resumed part): how it runs, e.g. world_size and backend."""
    append_jsonl(out / "log.jsonl", {"kind": "start", "step": c.step, **facts})


def record_train(
    out: Path, c: Counters, loss: float, lr: float, tok_s: float, wall: float, epochs: float, quiet: bool
) -> None:
    """One report line: to log.jsonl, and to stderr unless quiet."""
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
    append_jsonl(
        out / "log.jsonl",
        {
            "kind": "valid",
            "step": c.step,
            "wall": round(wall, 1),
            "dev_loss": round(v.loss, 4),
            "dev_ppl": round(v.ppl, 2),
            "dev_bleu": v.bleu,
            "best_bleu": max(c.best_bleu, 0.0),
        },
    )
    if not quiet:
        bleu = "" if v.bleu is None else f" | dev BLEU {v.bleu:5.2f}{' (best)' if improved else ''}"
        console.print(f"[bold]validate[/] step {c.step} | dev loss {v.loss:.3f} | dev ppl {v.ppl:.2f}{bleu}")


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
    """last.nmt, model.nmt when improved, step-N.nmt (the last keep_last), then the resume state."""
    save_model(out / "last.nmt", model, subword, facts)
    if improved:
        save_model(out / "model.nmt", model, subword, facts)
    if cfg.keep_last:
        save_model(out / f"step-{c.step}.nmt", model, subword, facts)
        for old in sorted(out.glob("step-*.nmt"), key=lambda p: int(p.stem[5:]))[: -cfg.keep_last]:
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
            "world_size": world_size,
            **({"cuda_rng": torch.cuda.get_rng_state_all()} if torch.cuda.is_initialized() else {}),
        },
    )

"""fit(): teacher-forced training with token batches, periodic validation and atomic checkpoints."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from nmt_cli import __version__, cpu, distributed
from nmt_cli.checkpoint import save_model
from nmt_cli.config import DataConfig, ModelConfig, TrainConfig, to_json
from nmt_cli.data import Batch, Example, collate, load_parallel, token_batches
from nmt_cli.device import autocast, check_precision, grad_scaler
from nmt_cli.distributed import World
from nmt_cli.errors import ConfigError
from nmt_cli.loss import backward, token_loss, validate
from nmt_cli.model import Seq2Seq, build_model, count_parameters
from nmt_cli.run_files import (
    Counters,
    file_facts,
    record_start,
    record_train,
    record_validation,
    restore,
    save_run,
    update_best,
)
from nmt_cli.schedule import learning_rate
from nmt_cli.subword import Subword

log = logging.getLogger(__name__)


class TrainSummary(NamedTuple):
    steps: int
    epochs: float
    tokens: int
    wall: float
    best_bleu: float | None
    best_step: int
    stopped: str  # why training ended: max-steps, epochs, time-budget, patience
    model_path: Path


STOP_REASONS = ("", "max-steps", "epochs", "time-budget", "patience")


class Place(NamedTuple):
    """Where a run trains: the device and, under torchrun, this process's place in the group."""

    device: torch.device = torch.device("cpu")
    world: World = World()


class Engine(NamedTuple):
    """How an update runs: device, precision's loss scaler, process group and DDP wrapper."""

    device: torch.device = torch.device("cpu")
    world: World = World()
    ddp: nn.Module | None = None  # DistributedDataParallel over the model, under torchrun
    scaler: torch.amp.GradScaler | None = None  # fp16 only


def _stop_reason(cfg: TrainConfig, c: Counters, epoch_progress: float, elapsed: float, reserve: float) -> str:
    if cfg.max_steps and c.step >= cfg.max_steps:
        return "max-steps"
    if cfg.epochs and epoch_progress >= cfg.epochs:
        return "epochs"
    if cfg.time_budget and elapsed + reserve >= cfg.time_budget:
        return "time-budget"
    if cfg.patience and c.bad_validations >= cfg.patience:
        return "patience"
    return ""


def _progress(cfg: TrainConfig, c: Counters, epoch_progress: float, elapsed: float) -> float:
    """The spent fraction of the run by whichever limit is set (for cosine and linear decay)."""
    parts = [
        c.step / cfg.max_steps if cfg.max_steps else 0.0,
        epoch_progress / cfg.epochs if cfg.epochs else 0.0,
        elapsed / cfg.time_budget if cfg.time_budget else 0.0,
    ]
    return max(parts)


def build_optimizer(model: Seq2Seq, cfg: TrainConfig) -> torch.optim.Optimizer:
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    # fused: one kernel per parameter for the whole update instead of a dozen passes over memory
    return kind(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


def place_model(model_cfg: ModelConfig, cfg: TrainConfig, place: Place) -> tuple[Seq2Seq, str, Engine]:
    """The model built (global RNG) and moved to the device; -> model, kernels, engine.

    The CPU swaps (fp32 oneDNN products) go in only for fp32 training: under bf16/fp16 autocast the
    plain model runs, so autocast decides each product's precision."""
    check_precision(cfg.precision, place.device)
    model = build_model(model_cfg).to(place.device)
    kernels = cpu.install(model) if cfg.precision == "fp32" else "plain"
    if place.world.distributed:
        torch.manual_seed(cfg.seed + place.world.rank)  # dropout differs by rank; the weights are rank 0's
    scaler = grad_scaler(cfg.precision, place.device) if cfg.precision == "fp16" else None
    return (
        model,
        kernels,
        Engine(place.device, place.world, distributed.wrap(model, place.world, place.device), scaler),
    )


class Run(NamedTuple):
    """What one training run reads and writes."""

    data: DataConfig
    subword: Subword
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    out_dir: Path


def fit(
    run: Run,
    resume: bool = False,
    start_time: float | None = None,
    quiet: bool = False,
    place: Place | None = None,
) -> TrainSummary:
    """Train until a limit is reached; saves last.nmt, model.nmt (best dev BLEU) and trainer_state.pt.

    Under torchrun every rank calls this; rank 0 alone validates and writes, and decides when to stop."""
    cfg, out, place = run.train_cfg, run.out_dir, place or Place()
    start = start_time if start_time is not None else time.time()
    if not (cfg.max_steps or cfg.epochs or cfg.time_budget):
        raise ConfigError("give a limit: --max-steps, --epochs or --time-budget")
    if place.world.main:
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            (out / "log.jsonl").unlink(missing_ok=True)  # a fresh run gets a fresh log
    train, report = load_parallel(run.data.train_src, run.data.train_tgt, run.subword, cfg.max_len)
    if not train:
        raise ConfigError(f"no usable training pairs in {run.data.train_src} ({report})")
    dev, refs = _load_dev(run) if place.world.main else ([], None)  # rank 0 validates
    log.info("training pairs: %d kept of %d (%s)", len(train), report.total, _skips(report))
    torch.manual_seed(cfg.seed)  # weight init and dropout; data order has its own generator
    model, kernels, engine = place_model(run.model_cfg, cfg, place)
    optimizer = build_optimizer(model, cfg)
    world = place.world
    c = restore(out / "trainer_state.pt", model, optimizer, run.model_cfg, world) if resume else Counters()
    if resume and world.distributed:
        torch.manual_seed(cfg.seed + world.rank + world.world_size * c.step)  # the saved RNG is rank 0's
    log.info(
        "model: %s parameters, %s attention, input feeding %s, kernels %s",
        f"{count_parameters(model):,}",
        run.model_cfg.attention,
        "on" if run.model_cfg.input_feeding else "off",
        kernels,
    )
    info_base = {
        "data": {k: file_facts(v) for k, v in asdict(run.data).items() if v},
        "train_config": to_json(cfg),
        "parameters": count_parameters(model),
        "kernels": kernels,
        "device": str(place.device),
        "precision": cfg.precision,
        "world_size": world.world_size,
        "backend": world.backend or "none",
        "nmt": __version__,
        "torch": torch.__version__,
    }
    if world.main:
        record_start(
            out, c, {k: info_base[k] for k in ("world_size", "backend", "device", "precision", "kernels")}
        )
    if not world.main:
        quiet = True
    return _loop(run, model, optimizer, c, train, dev, refs, info_base, start, quiet, engine)


def _load_dev(run: Run) -> tuple[list[Example], list[str] | None]:
    """Dev examples (long pairs kept: every line counts) and the raw references for BLEU."""
    if not run.data.dev_src:
        return [], None
    dev, _ = load_parallel(run.data.dev_src, run.data.dev_tgt, run.subword, max_len=10_000)
    limit = run.train_cfg.valid_max_sentences
    dev = dev[:limit] if limit else dev
    refs = [run.subword.decode(ex.tgt) for ex in dev]  # decoded, so refs align with the kept lines
    return dev, refs


def _skips(report: object) -> str:
    return ", ".join(f"{k} {v}" for k, v in report._asdict().items() if k.startswith("skipped") and v)  # type: ignore[attr-defined]


class _Clock:
    """Wall time since start, minus nothing: budgets count validation and saving too."""

    def __init__(self, start: float, earlier: float):
        self.start, self.earlier = start, earlier

    def elapsed(self) -> float:
        return self.earlier + time.time() - self.start


def _loop(
    run: Run,
    model: Seq2Seq,
    optimizer: torch.optim.Optimizer,
    c: Counters,
    train: list[Example],
    dev: list[Example],
    refs: list[str] | None,
    info: dict,
    start: float,
    quiet: bool,
    engine: Engine,
) -> TrainSummary:
    cfg, world = run.train_cfg, engine.world
    clock, reserve, stopped, saved_step = _Clock(start, c.wall), 0.0, "", c.step
    window_tokens, window_start = 0, time.time()
    next_snapshot = cfg.save_every_minutes * 60
    n_epoch_tokens = sum(len(ex.tgt) + 1 for ex in train)
    rank_tokens = max(1, cfg.batch_tokens // world.world_size)  # batch_tokens is per update, all ranks
    model.train()
    while not stopped:
        batches = token_batches(train, rank_tokens, cfg.seed, c.epoch, world.rank, world.world_size)
        while c.batch_in_epoch < len(batches):
            epoch_progress = c.epoch + c.batch_in_epoch / len(batches)
            # before the first validation its cost is unknown (an untrained model decodes to the length cap)
            guard = reserve * 1.2 + 2.0 if reserve else min(0.15 * cfg.time_budget, 120.0)
            reason = _stop_reason(cfg, c, epoch_progress, clock.elapsed(), guard)
            progress = _progress(cfg, c, epoch_progress, clock.elapsed())
            lr = learning_rate(cfg, c.step + 1, progress, c.plateau_scale)
            # rank 0's clock decides for all: every rank leaves at the same step, with the same rates
            code, lr = distributed.from_main(world, (STOP_REASONS.index(reason), lr))
            if stopped := STOP_REASONS[code]:
                break
            batch = collate([train[i] for i in batches[c.batch_in_epoch]])
            c.step, c.batch_in_epoch = c.step + 1, c.batch_in_epoch + 1
            n_tokens = distributed.total(world, batch.n_tokens, engine.device)
            loss = train_step(model, optimizer, batch, cfg, lr, engine, n_tokens)
            c.tokens, window_tokens = c.tokens + n_tokens, window_tokens + n_tokens
            if c.step % cfg.log_every == 0 and world.main:
                now = time.time()
                record_train(
                    run.out_dir,
                    c,
                    loss,
                    lr,
                    window_tokens / (now - window_start),
                    clock.elapsed(),
                    c.tokens / n_epoch_tokens,
                    quiet,
                )
                window_tokens, window_start = 0, now
            if cfg.save_every_minutes and world.main and clock.elapsed() >= next_snapshot:
                minute = int(clock.elapsed() // 60)
                save_model(
                    run.out_dir / f"min-{minute:03d}.nmt",
                    model,
                    run.subword,
                    dict(info, step=c.step, wall=round(clock.elapsed(), 1)),
                )
                next_snapshot += cfg.save_every_minutes * 60  # for learning curves by wall clock
            if c.step % cfg.valid_every == 0:
                began = time.time()
                _checkpoint(run, model, optimizer, c, dev, refs, info, clock, n_epoch_tokens, quiet, world)
                saved_step, reserve = c.step, time.time() - began
                window_start += reserve  # tokens/s leaves validation out
        else:
            c.epoch, c.batch_in_epoch = c.epoch + 1, 0
    if c.step != saved_step or not distributed.from_main(world, (run.out_dir / "model.nmt").exists()):
        _checkpoint(run, model, optimizer, c, dev, refs, info, clock, n_epoch_tokens, quiet, world)
    best = c.best_bleu if c.best_bleu >= 0 else None
    return TrainSummary(
        c.step,
        c.tokens / n_epoch_tokens,
        c.tokens,
        clock.elapsed(),
        best,
        c.best_step,
        stopped,
        run.out_dir / "model.nmt",
    )


def train_step(
    model: Seq2Seq,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    cfg: TrainConfig,
    lr: float,
    engine: Engine | None = None,
    n_tokens: int | None = None,
) -> float:
    """One update at learning rate lr; returns the batch's loss per target token.

    The gradient is that of the summed loss over n_tokens, the update's target tokens on all ranks
    (this batch's alone in one process). Under DDP, which averages gradients over ranks, each rank's
    loss is scaled by world_size / n_tokens so that the average is that gradient."""
    engine = engine or Engine()
    batch = batch.to(engine.device)
    n_tokens = n_tokens or batch.n_tokens
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    if engine.ddp is None and engine.scaler is None and cfg.precision == "fp32":
        loss = backward(model, batch, cfg.label_smoothing)  # the CPU path's written-out backward, if any
    else:
        # through autograd alone, so DDP's hooks see every gradient (the CPU path's output layer sets .grad)
        with autocast(cfg.precision, engine.device):
            summed = token_loss(model, batch, cfg.label_smoothing, forward=engine.ddp)
        scaled = summed * (engine.world.world_size / n_tokens)
        (engine.scaler.scale(scaled) if engine.scaler else scaled).backward()
        loss = summed.item()
    if engine.scaler:
        engine.scaler.unscale_(optimizer)
    if cfg.clip_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
    if engine.scaler:
        engine.scaler.step(optimizer)  # skipped when the scaled gradients overflowed
        engine.scaler.update()
    else:
        optimizer.step()
    return loss / batch.n_tokens


def _checkpoint(
    run: Run,
    model: Seq2Seq,
    optimizer: torch.optim.Optimizer,
    c: Counters,
    dev: list[Example],
    refs: list[str] | None,
    info: dict,
    clock: _Clock,
    n_epoch_tokens: int,
    quiet: bool,
    world: World,
) -> None:
    """Validate, then save last.nmt, model.nmt when dev BLEU improved, and the resume state.

    Under torchrun rank 0 does this while the others wait for its counters (best BLEU, patience, the
    plateau scale), which every rank needs for the same learning rate and stop decision."""
    if world.main:
        _validate_and_save(run, model, optimizer, c, dev, refs, info, clock.elapsed(), n_epoch_tokens, quiet)
    for name, value in distributed.from_main(world, asdict(c)).items():
        setattr(c, name, value)


def _validate_and_save(
    run: Run,
    model: Seq2Seq,
    optimizer: torch.optim.Optimizer,
    c: Counters,
    dev: list[Example],
    refs: list[str] | None,
    info: dict,
    wall: float,
    n_epoch_tokens: int,
    quiet: bool,
) -> None:
    v = validate(model, dev, run.subword, refs) if dev else None
    improved = update_best(c, v, run.train_cfg)
    c.wall = wall
    facts = dict(
        info, step=c.step, epochs=round(c.tokens / n_epoch_tokens, 4), tokens=c.tokens, wall=round(c.wall, 1)
    )
    if v is not None:
        facts.update(
            dev_loss=round(v.loss, 4), dev_ppl=round(v.ppl, 2), dev_bleu=v.bleu, bleu_signature=v.signature
        )
        record_validation(run.out_dir, c, v, improved, c.wall, quiet)
    save_run(
        run.out_dir, model, optimizer, run.subword, c, facts, improved, run.train_cfg, info["world_size"]
    )

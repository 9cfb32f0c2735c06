"""One training update, and what it runs on: the optimizer, the placed model and how its updates run.

Shared by training (`train.fit`), `nmt bench train` and the tests that compare updates across devices,
precisions and process counts; the run around the updates (data, schedule, validation, files) is train.py's.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from nmt_cli import cpu, distributed
from nmt_cli.config import ModelConfig, TrainConfig
from nmt_cli.data import Batch
from nmt_cli.device import autocast, check_precision, grad_scaler
from nmt_cli.distributed import World
from nmt_cli.loss import backward, token_loss
from nmt_cli.model import Seq2Seq, build_model


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


def build_optimizer(model: Seq2Seq, cfg: TrainConfig) -> torch.optim.Optimizer:
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    # fused: one kernel per parameter for the whole update instead of a dozen passes over memory
    return kind(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


def place_model(model_cfg: ModelConfig, cfg: TrainConfig, place: Place) -> tuple[Seq2Seq, str, Engine]:
    """The model built (global RNG) and moved to the device; -> model, kernels, engine."""
    model = build_model(model_cfg)
    return (model, *engine_for(model, cfg, place))


def engine_for(model: Seq2Seq, cfg: TrainConfig, place: Place) -> tuple[str, Engine]:
    """Move a built model to the device and set up how its updates run; -> kernels, engine.

    The CPU swaps (fp32 oneDNN products) go in only for fp32 training: under bf16/fp16 autocast the
    plain model runs, so autocast decides each product's precision. Under torchrun the model is wrapped
    in DistributedDataParallel, which starts every rank from rank 0's weights."""
    check_precision(cfg.precision, place.device)
    model.to(place.device)
    kernels = cpu.install(model) if cfg.precision == "fp32" else "plain"
    if place.world.distributed:
        torch.manual_seed(cfg.seed + place.world.rank)  # dropout differs by rank; the weights are rank 0's
    scaler = grad_scaler(cfg.precision, place.device) if cfg.precision == "fp16" else None
    return kernels, Engine(
        place.device, place.world, distributed.wrap(model, place.world, place.device), scaler
    )


def train_step(
    model: Seq2Seq,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    cfg: TrainConfig,
    lr: float,
    engine: Engine | None = None,
    n_tokens: int | None = None,
    n_sents: int | None = None,
) -> float:
    """One update at learning rate lr; returns the batch's loss per target token.

    The gradient is that of the summed loss over n_tokens, the update's target tokens on all ranks (this
    batch's alone in one process), or over n_sents, its sentences, with normalization "sents". Under DDP,
    which averages gradients over ranks, each rank's loss is scaled by world_size over that count so that
    the average is that gradient."""
    engine = engine or Engine()
    batch = batch.to(engine.device)
    n_tokens = n_tokens or batch.n_tokens
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    if engine.ddp is None and engine.scaler is None and cfg.precision == "fp32":
        # the CPU path's written-out backward, if any; "sents" rescales by this batch's tokens per sentence
        loss = backward(model, batch, cfg.label_smoothing, cfg.normalization)
    else:
        # through autograd alone, so DDP's hooks see every gradient (the CPU path's output layer sets .grad)
        with autocast(cfg.precision, engine.device):
            summed = token_loss(model, batch, cfg.label_smoothing, forward=engine.ddp)
        denominator = n_tokens if cfg.normalization == "tokens" else (n_sents or batch.src.size(0))
        scaled = summed * (engine.world.world_size / denominator)
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

"""fit(): teacher-forced training with token batches, periodic validation and atomic checkpoints."""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from nmt_cli import __version__
from nmt_cli.checkpoint import load_trainer_state, save_model, save_trainer_state
from nmt_cli.config import DataConfig, DecodeConfig, ModelConfig, TrainConfig, from_json, to_json
from nmt_cli.console import console
from nmt_cli.data import Batch, Example, collate, load_parallel, token_batches
from nmt_cli.decode import decode_ids
from nmt_cli.errors import ConfigError
from nmt_cli.metrics import corpus_scores
from nmt_cli.model import PAD, Seq2Seq, build_model, count_parameters
from nmt_cli.schedule import learning_rate
from nmt_cli.subword import Subword
from nmt_cli.textio import append_jsonl

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


class Validation(NamedTuple):
    loss: float
    ppl: float
    bleu: float | None
    signature: str


@dataclass
class Counters:
    """Everything that moves during training and must survive a resume."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    tokens: int = 0
    wall: float = 0.0  # training seconds spent in earlier runs of a resumed training
    best_bleu: float = -1.0
    best_step: int = 0
    bad_validations: int = 0
    plateau_scale: float = 1.0


def token_loss(model: Seq2Seq, batch: Batch, label_smoothing: float = 0.0) -> torch.Tensor:
    """Summed cross-entropy over real target tokens; the output layer runs only where tgt is not PAD."""
    hidden = model.teacher_force(batch.src, batch.src_lengths, batch.tgt_in).hidden  # (B, T, H)
    real = batch.tgt_out != PAD
    logits = model.generator(hidden[real])  # (N, V), N real tokens
    return F.cross_entropy(logits, batch.tgt_out[real], label_smoothing=label_smoothing, reduction="sum")


@torch.inference_mode()
def validate(model: Seq2Seq, dev: list[Example], subword: Subword, refs: list[str] | None) -> Validation:
    """Dev loss per token (no smoothing) and greedy BLEU against the dev references; keeps model's mode."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for start in range(0, len(dev), 64):
        batch = collate(dev[start : start + 64])
        total += token_loss(model, batch).item()
        tokens += batch.n_tokens
    bleu, signature = None, ""
    if refs is not None:
        hyps = decode_ids(model, [ex.src for ex in dev], DecodeConfig(beam_size=1), batch_size=100)
        texts = [subword.decode(nbest[0].tokens) for nbest in hyps]
        result = corpus_scores(texts, [refs], metrics=("bleu",))[0]
        bleu, signature = result.score, result.signature
    model.train(was_training)
    loss = total / max(tokens, 1)
    return Validation(loss, math.exp(min(loss, 50.0)), bleu, signature)


def file_facts(path: str) -> dict[str, object]:
    data = Path(path).read_bytes()
    return {"path": path, "sha256": hashlib.sha256(data).hexdigest()[:16], "lines": data.count(b"\n")}


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
    return kind(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


class Run(NamedTuple):
    """What one training run reads and writes."""

    data: DataConfig
    subword: Subword
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    out_dir: Path


def fit(run: Run, resume: bool = False, start_time: float | None = None, quiet: bool = False) -> TrainSummary:
    """Train until a limit is reached; saves last.nmt, model.nmt (best dev BLEU) and trainer_state.pt."""
    cfg, out = run.train_cfg, run.out_dir
    start = start_time if start_time is not None else time.time()
    if not (cfg.max_steps or cfg.epochs or cfg.time_budget):
        raise ConfigError("give a limit: --max-steps, --epochs or --time-budget")
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        (out / "log.jsonl").unlink(missing_ok=True)  # a fresh run gets a fresh log
    train, report = load_parallel(run.data.train_src, run.data.train_tgt, run.subword, cfg.max_len)
    if not train:
        raise ConfigError(f"no usable training pairs in {run.data.train_src} ({report})")
    dev, refs = _load_dev(run)
    log.info("training pairs: %d kept of %d (%s)", len(train), report.total, _skips(report))
    torch.manual_seed(cfg.seed)  # weight init and dropout; data order has its own generator
    model = build_model(run.model_cfg)
    optimizer = build_optimizer(model, cfg)
    c = _restore(out / "trainer_state.pt", model, optimizer, run) if resume else Counters()
    log.info(
        "model: %s parameters, %s attention, input feeding %s",
        f"{count_parameters(model):,}",
        run.model_cfg.attention,
        "on" if run.model_cfg.input_feeding else "off",
    )
    info_base = {
        "data": {k: file_facts(v) for k, v in asdict(run.data).items() if v},
        "train_config": to_json(cfg),
        "parameters": count_parameters(model),
        "nmt": __version__,
        "torch": torch.__version__,
    }
    return _loop(run, model, optimizer, c, train, dev, refs, info_base, start, quiet)


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


def _restore(path: Path, model: Seq2Seq, optimizer: torch.optim.Optimizer, run: Run) -> Counters:
    """Weights, optimizer, RNG and counters of an earlier run; a different model config is refused."""
    state = load_trainer_state(path)
    saved = from_json(ModelConfig, state["model_config"])
    for name, value in asdict(run.model_cfg).items():
        if getattr(saved, name) != value:
            raise ConfigError(
                f"cannot resume: model config differs in {name} "
                f"(saved {getattr(saved, name)!r}, now {value!r})",
                str(path),
            )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    return Counters(**state["counters"])


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
) -> TrainSummary:
    cfg = run.train_cfg
    clock, reserve, stopped, saved_step = _Clock(start, c.wall), 0.0, "", c.step
    window_tokens, window_start = 0, time.time()
    next_snapshot = cfg.save_every_minutes * 60
    n_epoch_tokens = sum(len(ex.tgt) + 1 for ex in train)
    model.train()
    while not stopped:
        batches = token_batches(train, cfg.batch_tokens, cfg.seed, c.epoch)
        while c.batch_in_epoch < len(batches):
            epoch_progress = c.epoch + c.batch_in_epoch / len(batches)
            guard = reserve * 1.2 + 2.0 if reserve else min(0.05 * cfg.time_budget, 60.0)
            if stopped := _stop_reason(cfg, c, epoch_progress, clock.elapsed(), guard):
                break
            batch = collate([train[i] for i in batches[c.batch_in_epoch]])
            c.step, c.batch_in_epoch = c.step + 1, c.batch_in_epoch + 1
            lr = learning_rate(
                cfg, c.step, _progress(cfg, c, epoch_progress, clock.elapsed()), c.plateau_scale
            )
            loss = train_step(model, optimizer, batch, cfg, lr)
            c.tokens, window_tokens = c.tokens + batch.n_tokens, window_tokens + batch.n_tokens
            if c.step % cfg.log_every == 0:
                now = time.time()
                _log_train(
                    run,
                    c,
                    loss,
                    lr,
                    window_tokens / (now - window_start),
                    clock.elapsed(),
                    c.tokens / n_epoch_tokens,
                    quiet,
                )
                window_tokens, window_start = 0, now
            if cfg.save_every_minutes and clock.elapsed() >= next_snapshot:
                minute = int(clock.elapsed() // 60)
                save_model(run.out_dir / f"min-{minute:03d}.nmt", model, run.subword,
                           dict(info, step=c.step, wall=round(clock.elapsed(), 1)))
                next_snapshot += cfg.save_every_minutes * 60  # for learning curves by wall clock
            if c.step % cfg.valid_every == 0:
                began = time.time()
                _checkpoint(run, model, optimizer, c, dev, refs, info, clock, n_epoch_tokens, quiet)
                saved_step, reserve = c.step, time.time() - began
                window_start += reserve  # tokens/s leaves validation out
        else:
            c.epoch, c.batch_in_epoch = c.epoch + 1, 0
    if c.step != saved_step or not (run.out_dir / "model.nmt").exists():
        _checkpoint(run, model, optimizer, c, dev, refs, info, clock, n_epoch_tokens, quiet)
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
    model: Seq2Seq, optimizer: torch.optim.Optimizer, batch: Batch, cfg: TrainConfig, lr: float
) -> float:
    """One update at learning rate lr; returns the batch's loss per target token."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss = backward_in_chunks(model, batch, cfg.label_smoothing)
    if cfg.clip_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
    optimizer.step()
    return loss / batch.n_tokens


def backward_in_chunks(model: Seq2Seq, batch: Batch, label_smoothing: float, chunk: int = 1024) -> float:
    """Backward of token_loss / n_tokens with the (N, V) logits made `chunk` tokens at a time.

    The output layer and loss dominate memory (three N x V tensors for ~3,000 tokens and 8,000 pieces:
    ~260 MB); in chunks they stay near 100 MB, and the gradients are the same sums (tested).
    """
    hidden = model.teacher_force(batch.src, batch.src_lengths, batch.tgt_in).hidden
    real = batch.tgt_out != PAD
    states, targets = hidden[real], batch.tgt_out[real]  # (N, H), (N,)
    cut = states.detach().requires_grad_()
    total = 0.0
    for start in range(0, cut.size(0), chunk):
        logits = model.generator(cut[start : start + chunk])
        loss = F.cross_entropy(
            logits, targets[start : start + chunk], label_smoothing=label_smoothing, reduction="sum"
        )
        (loss / batch.n_tokens).backward()
        total += loss.item()
    states.backward(cut.grad)
    return total


def _log_train(
    run: Run, c: Counters, loss: float, lr: float, tok_s: float, wall: float, epochs: float, quiet: bool
) -> None:
    record = {
        "kind": "train",
        "step": c.step,
        "epoch": round(epochs, 4),
        "wall": round(wall, 2),
        "loss": round(loss, 4),
        "ppl": round(math.exp(min(loss, 50.0)), 2),
        "lr": lr,
        "tok_s": round(tok_s, 1),
        "tokens": c.tokens,
    }
    append_jsonl(run.out_dir / "log.jsonl", record)
    if not quiet:
        console.print(
            f"step {c.step:>6} | epoch {epochs:5.2f} | loss {loss:6.3f} | ppl {record['ppl']:8.2f} | "
            f"lr {lr:.2e} | {tok_s:7.0f} tok/s | {wall:6.0f}s"
        )


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
) -> None:
    """Validate, then save last.nmt, model.nmt when dev BLEU improved, and the resume state."""
    cfg, out = run.train_cfg, run.out_dir
    v = validate(model, dev, run.subword, refs) if dev else None
    improved = v is None or v.bleu is None or v.bleu > c.best_bleu
    if v is not None and v.bleu is not None:
        c.best_bleu, c.best_step = (v.bleu, c.step) if improved else (c.best_bleu, c.best_step)
        c.bad_validations = 0 if improved else c.bad_validations + 1
        if not improved and cfg.schedule == "plateau" and c.bad_validations % cfg.plateau_patience == 0:
            c.plateau_scale *= cfg.plateau_factor
    facts = dict(
        info,
        step=c.step,
        epochs=round(c.tokens / n_epoch_tokens, 4),
        tokens=c.tokens,
        wall=round(clock.elapsed(), 1),
    )
    if v is not None:
        facts.update(
            dev_loss=round(v.loss, 4), dev_ppl=round(v.ppl, 2), dev_bleu=v.bleu, bleu_signature=v.signature
        )
        record = {
            "kind": "valid",
            "step": c.step,
            "wall": facts["wall"],
            "dev_loss": facts["dev_loss"],
            "dev_ppl": facts["dev_ppl"],
            "dev_bleu": v.bleu,
            "best_bleu": max(c.best_bleu, 0.0),
        }
        append_jsonl(out / "log.jsonl", record)
        if not quiet:
            bleu = "" if v.bleu is None else f" | dev BLEU {v.bleu:5.2f}{' (best)' if improved else ''}"
            console.print(
                f"[bold]validate[/] step {c.step} | dev loss {v.loss:.3f} | dev ppl {v.ppl:.2f}{bleu}"
            )
    save_model(out / "last.nmt", model, run.subword, facts)
    if improved:
        save_model(out / "model.nmt", model, run.subword, facts)
    if cfg.keep_last:
        save_model(out / f"step-{c.step}.nmt", model, run.subword, facts)
        for old in sorted(out.glob("step-*.nmt"), key=lambda p: int(p.stem[5:]))[: -cfg.keep_last]:
            old.unlink()
    c.wall = clock.elapsed()
    save_trainer_state(
        out / "trainer_state.pt",
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "counters": asdict(c),
            "torch_rng": torch.get_rng_state(),
            "model_config": to_json(run.model_cfg),
            "train_config": to_json(cfg),
        },
    )

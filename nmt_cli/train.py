"""fit(): teacher-forced training with token batches, periodic validation and atomic checkpoints."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from nmt_cli import __version__, distributed
from nmt_cli.checkpoint import save_model
from nmt_cli.config import DataConfig, ModelConfig, TrainConfig, to_json
from nmt_cli.data import Example, LoadReport, collate, epoch_tokens, load_parallel, token_batches
from nmt_cli.distributed import World
from nmt_cli.errors import ConfigError
from nmt_cli.loss import validate
from nmt_cli.model import Seq2Seq, build_model, count_parameters
from nmt_cli.run_files import (
    Counters,
    RunIdentity,
    file_facts,
    prepare_run_dir,
    record_start,
    record_train,
    record_validation,
    record_vectors,
    restore,
    save_run,
    subword_digest,
    update_best,
)
from nmt_cli.schedule import learning_rate
from nmt_cli.store import training_pairs
from nmt_cli.subword import Subword
from nmt_cli.textio import read_lines
from nmt_cli.update import Engine, Place, build_optimizer, engine_for, train_step
from nmt_cli.vectors import Coverage, PieceVectors, coverage, read_vectors

log = logging.getLogger(__name__)


class TrainSummary(NamedTuple):
    steps: int
    epochs: float
    tokens: int
    wall: float
    best_bleu: float | None
    best_step: int
    stopped: str  # why training ended: max-steps, epochs, time-budget, patience, SIGINT, SIGTERM
    model_path: Path


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


def _progress(cfg: TrainConfig, step: int, epoch_progress: float, elapsed: float) -> float:
    """The spent fraction of the run by whichever limit is set (for cosine and linear decay)."""
    parts = [
        step / cfg.max_steps if cfg.max_steps else 0.0,
        epoch_progress / cfg.epochs if cfg.epochs else 0.0,
        elapsed / cfg.time_budget if cfg.time_budget else 0.0,
    ]
    return max(parts)


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
    interrupt: Callable[[], str] | None = None,
    place: Place | None = None,
) -> TrainSummary:
    """Train until a limit is reached; saves last.nmt, model.nmt (best dev BLEU) and trainer_state.pt.

    Nothing in out_dir changes until every input has been read and checked. interrupt, asked before each
    update, returns why to stop at once (e.g. "SIGTERM") or "": then the resume state is saved without
    a validation and the summary's stopped is that reason.

    Under torchrun every rank calls this with its place; rank 0 alone validates and writes, its clock
    decides when to stop, and a signal to any rank stops them all at the same step.
    """
    cfg, out, place = run.train_cfg, run.out_dir, place or Place()
    world = place.world
    start = start_time if start_time is not None else time.time()
    if not (cfg.max_steps or cfg.epochs or cfg.time_budget):
        raise ConfigError("give a limit: --max-steps, --epochs or --time-budget")
    if run.model_cfg.vocab_size != run.subword.vocab_size:
        raise ConfigError(
            f"model vocab_size {run.model_cfg.vocab_size} does not match the subword model's "
            f"{run.subword.vocab_size}"
        )
    train, report, train_facts = training_pairs(run.data, run.subword, cfg.max_len)
    if not train:
        raise ConfigError(f"no usable training pairs in {run.data.train_src} ({report})")
    dev, refs = _load_dev(run) if world.main else ([], None)  # rank 0 validates
    log.info("training pairs: %d kept of %d%s", len(train), report.total, _skips(report))
    torch.manual_seed(cfg.seed)  # weight init and dropout; data order has its own generator
    model = build_model(run.model_cfg)
    freeze_embeddings(model, run)
    # a resumed run restores the trained rows instead; the coverage is recorded once the log is ready
    vectors = [] if resume else load_vectors(model, run, train)
    kernels, engine = engine_for(model, cfg, place)
    optimizer = build_optimizer(model, cfg)
    # a store's corpus facts come from the store (digests recorded once), not from hashing its files again
    data_facts = {k: file_facts(v) for k, v in asdict(run.data).items() if v and k not in train_facts}
    data_facts |= train_facts
    identity = RunIdentity(run.model_cfg, cfg, data_facts, subword_digest(run.subword), world.world_size)
    c = restore(out / "trainer_state.pt", model, optimizer, identity) if resume else Counters()
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
        "data": data_facts,
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
        prepare_run_dir(out, c.step if resume else None, run.subword)
        how = ("world_size", "backend", "device", "precision", "kernels")
        record_start(out, c, {k: info_base[k] for k in how})
        for side in vectors:
            record_vectors(out, *side, cfg.freeze_embeddings)
    training = _Training(
        run,
        model,
        optimizer,
        engine,
        train,
        dev,
        refs,
        info_base,
        _Clock(start, c.wall),
        epoch_tokens(train),  # from the lengths: a store's pairs stay on disk
        quiet or not world.main,
        interrupt,
    )
    return _loop(training, c)


def _vector_sides(model: Seq2Seq, run: Run) -> list[tuple[str, str, torch.nn.Embedding]]:
    """(side, vector file, embedding) for each embedding that takes pretrained vectors."""
    cfg = run.train_cfg
    if run.model_cfg.share_embeddings:
        files = sorted({f for f in (cfg.src_vectors, cfg.tgt_vectors) if f})
        if len(files) > 1:
            raise ConfigError("shared embeddings take one vector file: give the same file to both, or one")
        return [("shared", files[0], model.tgt_embedding)] if files else []
    sides = [("src", cfg.src_vectors, model.encoder.embedding), ("tgt", cfg.tgt_vectors, model.tgt_embedding)]
    return [side for side in sides if side[1]]


def load_vectors(
    model: Seq2Seq, run: Run, train: Sequence[Example]
) -> list[tuple[str, str, PieceVectors, Coverage]]:
    """Embedding rows from the vector files; the coverage of each goes to stderr, and is returned as
    (side, path, vectors found, coverage) for log.jsonl (run_files.record_vectors)."""
    sides = []
    pieces = run.subword.id_to_piece(range(run.subword.vocab_size))
    for side, path, embedding in _vector_sides(model, run):
        found = read_vectors(path, pieces, run.model_cfg.emb_size)
        with torch.no_grad():  # pieces without a vector keep their initialisation
            embedding.weight[found.ids] = found.vectors
        corpus = [ex.src for ex in train] if side != "tgt" else []
        corpus += [ex.tgt for ex in train] if side != "src" else []
        cov = coverage(found.ids, pieces, corpus)
        log.info(
            "%s vectors %s: %d read, %d identical and %d word-initial matches; %s",
            side,
            path,
            found.read,
            found.exact,
            found.stripped,
            cov.as_text(),
        )
        sides.append((side, path, found, cov))
    return sides


def freeze_embeddings(model: Seq2Seq, run: Run) -> None:
    """With freeze_embeddings, the embeddings that took vectors are not trained (uncovered rows included)."""
    if not run.train_cfg.freeze_embeddings:
        return
    sides = _vector_sides(model, run)
    if run.model_cfg.tie_embeddings and any(side != "src" for side, _, _ in sides):
        raise ConfigError("freeze_embeddings with tie_embeddings would freeze the output layer too")
    for _, _, embedding in sides:
        embedding.weight.requires_grad_(False)


def _load_dev(run: Run) -> tuple[list[Example], list[str] | None]:
    """Dev examples (long pairs kept: every line counts) and their raw reference lines for BLEU.

    The references are the lines as written, as `nmt evaluate` scores them: decode(encode(line)) would
    turn characters outside the vocabulary into the same unknown piece on both sides, and match them.
    """
    if not run.data.dev_src:
        return [], None
    dev, _ = load_parallel(run.data.dev_src, run.data.dev_tgt, run.subword, max_len=10_000)
    limit = run.train_cfg.valid_max_sentences
    dev = dev[:limit] if limit else dev
    lines = read_lines(run.data.dev_tgt)
    return dev, [lines[ex.line - 1] for ex in dev]


def _skips(report: LoadReport) -> str:
    """' (skipped: 2 empty, 3 too long)', or nothing when every pair was kept."""
    parts = [
        f"{n} {what}" for n, what in ((report.skipped_empty, "empty"), (report.skipped_long, "too long")) if n
    ]
    return f" (skipped: {', '.join(parts)})" if parts else ""


class _Clock:
    """Wall time since start, minus nothing: budgets count validation and saving too."""

    def __init__(self, start: float, earlier: float):
        self.start, self.earlier = start, earlier

    def elapsed(self) -> float:
        return self.earlier + time.time() - self.start


@dataclass(frozen=True)
class _Training:
    """What one fit() call trains with, made once: the loop and each checkpoint read it, and only the
    Counters change as training goes."""

    run: Run
    model: Seq2Seq
    optimizer: torch.optim.Optimizer
    engine: Engine
    train: Sequence[Example]
    dev: list[Example]
    refs: list[str] | None  # the dev references as written, for BLEU
    info: dict  # facts every saved model records
    clock: _Clock
    epoch_tokens: int  # target tokens in one epoch, for the epoch count
    quiet: bool
    interrupt: Callable[[], str] | None


def _loop(t: _Training, c: Counters) -> TrainSummary:
    run, model, optimizer, engine, train = t.run, t.model, t.optimizer, t.engine, t.train
    cfg, world, clock, interrupt = run.train_cfg, engine.world, t.clock, t.interrupt
    reserve, stopped, saved_step = 0.0, "", c.step
    # tokens: the update's, all ranks together; the loss window: this rank's, summed over ranks to report
    window_tokens, window_loss, window_own, window_start = 0, 0.0, 0, time.time()
    snapshots = _Snapshots(cfg.save_every_minutes * 60, clock.elapsed())
    rank_tokens = max(1, cfg.batch_tokens // world.world_size)  # batch_tokens is per update, all ranks
    model.train()
    while not stopped:
        batches = token_batches(train, rank_tokens, cfg.seed, c.epoch, world.rank, world.world_size)
        while c.batch_in_epoch < len(batches):
            epoch_progress = c.epoch + c.batch_in_epoch / len(batches)
            # before the first validation its cost is unknown (an untrained model decodes to the length cap)
            guard = reserve * 1.2 + 2.0 if reserve else min(0.15 * cfg.time_budget, 120.0)
            elapsed = clock.elapsed()
            reason = _stop_reason(cfg, c, epoch_progress, elapsed, guard)
            lr = learning_rate(
                cfg, c.step + 1, _progress(cfg, c.step + 1, epoch_progress, elapsed), c.plateau_scale
            )
            stopped, lr = _decided(world, interrupt, reason, lr)
            if stopped:
                break
            batch = collate([train[i] for i in batches[c.batch_in_epoch]])
            c.step, c.batch_in_epoch = c.step + 1, c.batch_in_epoch + 1
            n_tokens, n_sents = (
                int(n) for n in distributed.total(world, [batch.n_tokens, batch.src.size(0)], engine.device)
            )
            loss = train_step(model, optimizer, batch, cfg, lr, engine, n_tokens, n_sents)
            c.tokens, window_tokens = c.tokens + n_tokens, window_tokens + n_tokens
            # reports show the window's mean, not one batch's swing
            window_loss, window_own = window_loss + loss * batch.n_tokens, window_own + batch.n_tokens
            if c.step % cfg.log_every == 0:  # the same step on every rank
                window_loss, window_own = distributed.total(world, [window_loss, window_own], engine.device)
                now = time.time()
                if world.main:
                    record_train(
                        run.out_dir,
                        c,
                        window_loss / window_own,
                        lr,
                        window_tokens / (now - window_start),
                        clock.elapsed(),
                        c.tokens / t.epoch_tokens,
                        t.quiet,
                    )
                window_tokens, window_loss, window_own, window_start = 0, 0.0, 0, now
            if world.main and snapshots.due(clock.elapsed()):  # for learning curves by wall clock
                minute = int(clock.elapsed() // 60)
                save_model(
                    run.out_dir / f"min-{minute:03d}.nmt",
                    model,
                    run.subword,
                    dict(t.info, step=c.step, wall=round(clock.elapsed(), 1)),
                )
            if c.step % cfg.valid_every == 0:
                began = time.time()
                _checkpoint(t, c)
                saved_step, reserve = c.step, time.time() - began
                window_start += reserve  # tokens/s leaves validation out
        else:
            c.epoch, c.batch_in_epoch = c.epoch + 1, 0
    if c.step != saved_step or not distributed.from_main(world, (run.out_dir / "model.nmt").exists()):
        # a stop between two validations: validate (unless interrupted: then save at once) for the
        # report and model.nmt, not for the schedule's counters
        interrupted, _ = _decided(world, interrupt, "", 0.0)
        extra = "off" if interrupted else "extra"
        _checkpoint(t, c, extra)
    best = c.kept_bleu if c.kept_bleu >= 0 else None
    return TrainSummary(
        c.step,
        c.tokens / t.epoch_tokens,
        c.tokens,
        clock.elapsed(),
        best,
        c.kept_step,
        stopped,
        run.out_dir / "model.nmt",
    )


def _decided(world: World, interrupt: Callable[[], str] | None, reason: str, lr: float) -> tuple[str, float]:
    """Why to stop ("" to go on) and the next update's learning rate, the same on every rank, so that
    all leave at the same step: a signal to any rank stops them all; otherwise rank 0's reason (its
    clock) and rate count. One process: its own."""
    asked = interrupt() if interrupt else ""
    votes = distributed.gather(world, (asked, reason, lr))
    asked = next((a for a, _, _ in votes if a), "")
    _, reason, lr = votes[0]
    return asked or reason, lr


class _Snapshots:
    """When the next min-M.nmt is due: at each multiple of the interval, counted on the run's clock
    (earlier runs of a resumed training included); a pause over several intervals gives one snapshot."""

    def __init__(self, interval: float, now: float):
        self.interval = interval
        self.next = self._after(now)

    def _after(self, now: float) -> float:
        return (math.floor(now / self.interval) + 1) * self.interval if self.interval else math.inf

    def due(self, now: float) -> bool:
        if now < self.next:
            return False
        self.next = self._after(now)
        return True


def _checkpoint(t: _Training, c: Counters, validation: str = "scheduled") -> None:
    """Validate, then save last.nmt, model.nmt when dev BLEU improved, and the resume state.

    validation: "scheduled" (every valid_every steps: moves patience and plateau), "extra" (at a stop
    between two: may only replace model.nmt) or "off" (a signal: save at once; model.nmt only if none).
    Under torchrun rank 0 does this while the others wait for its counters (best BLEU, patience, the
    plateau scale), which every rank needs for the same learning rate and stop decision.
    """
    world = t.engine.world
    if world.main:
        _validate_and_save(t, c, validation)
    for name, value in distributed.from_main(world, asdict(c)).items():
        setattr(c, name, value)


def _validate_and_save(t: _Training, c: Counters, validation: str) -> None:
    run, dev = t.run, t.dev
    v = validate(t.model, dev, run.subword, t.refs) if dev and validation != "off" else None
    if dev and v is None:
        improved = not (run.out_dir / "model.nmt").exists()
    else:
        improved = update_best(c, v, run.train_cfg, scheduled=validation == "scheduled")
    c.wall = t.clock.elapsed()
    facts = dict(
        t.info,
        step=c.step,
        epochs=round(c.tokens / t.epoch_tokens, 4),
        tokens=c.tokens,
        wall=round(c.wall, 1),
    )
    if v is not None:
        facts.update(
            dev_loss=round(v.loss, 4), dev_ppl=round(v.ppl, 2), dev_bleu=v.bleu, bleu_signature=v.signature
        )
        record_validation(run.out_dir, c, v, improved, c.wall, t.quiet)
    save_run(
        run.out_dir,
        t.model,
        t.optimizer,
        run.subword,
        c,
        facts,
        improved,
        run.train_cfg,
        t.info["world_size"],
    )

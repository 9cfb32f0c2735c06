"""`nmt train`: flags, a TOML file and a preset merged into configs, then one call to fit()."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from nmt_cli.cli_base import PROCESS_START, parse_duration, set_threads, write_stdout
from nmt_cli.errors import ConfigError, InputError

SECTIONS = ("model", "train", "subword")


def read_toml(path: Path) -> dict[str, dict[str, Any]]:
    """A run file with [model], [train] and [subword] tables (and an optional top-level preset)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("no such config file", str(path)) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"not valid TOML: {e}", str(path)) from None
    unknown = sorted(set(raw) - set(SECTIONS) - {"preset"})
    if unknown:
        raise ConfigError(f"unknown tables {unknown}; valid: preset, {', '.join(SECTIONS)}", str(path))
    return raw


def merged_configs(
    preset_name: str | None,
    config_file: Path | None,
    model_flags: dict[str, Any],
    train_flags: dict[str, Any],
    subword_flags: dict[str, Any],
) -> tuple[Any, Any, Any]:
    """Defaults < preset < config file < flags, as frozen, validated configs."""
    from nmt_cli.config import ModelConfig, SubwordConfig, TrainConfig, from_dict, preset

    raw = read_toml(config_file) if config_file else {}
    name = preset_name or raw.get("preset")
    model, train = preset(name) if name else ({}, {})
    layers = [
        (model, raw.get("model", {}), model_flags),
        (train, raw.get("train", {}), train_flags),
        ({}, raw.get("subword", {}), subword_flags),
    ]
    merged = []
    for base, from_file, flags in layers:
        merged.append({**base, **from_file, **{k: v for k, v in flags.items() if v is not None}})
    sub = from_dict(SubwordConfig, merged[2])
    model_cfg = from_dict(ModelConfig, {**merged[0], "vocab_size": merged[0].get("vocab_size", 8)})
    return model_cfg, from_dict(TrainConfig, merged[1]), sub


def train(
    src: Path = typer.Option(..., "--src", help="Training corpus, source side."),
    tgt: Path = typer.Option(..., "--tgt", help="Training corpus, target side."),
    out: Path = typer.Option(..., "-o", "--out", help="Run directory: model.nmt, last.nmt, log.jsonl."),
    dev_src: Path | None = typer.Option(None, "--dev-src", help="Dev set, source side (validation)."),
    dev_tgt: Path | None = typer.Option(None, "--dev-tgt", help="Dev set, target side."),
    spm: Path | None = typer.Option(
        None, "--spm", help="SentencePiece model; trained on the corpus if absent."
    ),
    config: Path | None = typer.Option(
        None, "--config", help="TOML run file with [model] [train] [subword]."
    ),
    preset: str | None = typer.Option(None, "--preset", help="Recipe: base-rnn, cpu-15min, toy, tiny."),
    epochs: float | None = typer.Option(None, "--epochs", help="Stop after this many epochs."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Stop after this many updates."),
    time_budget: str | None = typer.Option(
        None, "--time-budget", help="Stop within this wall time: 900, 15m, 1h."
    ),
    attention: str | None = typer.Option(None, help="bahdanau, dot, general or scaled-dot."),
    input_feeding: bool | None = typer.Option(None, "--input-feeding/--no-input-feeding"),
    emb_size: int | None = typer.Option(None),
    encoder_hidden: int | None = typer.Option(None, help="Encoder units per direction."),
    encoder_layers: int | None = typer.Option(None),
    encoder_cell: str | None = typer.Option(None, help="lstm or gru."),
    bidirectional: bool | None = typer.Option(None, "--bidirectional/--unidirectional"),
    decoder_hidden: int | None = typer.Option(None),
    decoder_layers: int | None = typer.Option(None),
    bridge: bool | None = typer.Option(None, "--bridge/--no-bridge"),
    dropout: float | None = typer.Option(None),
    tie_embeddings: bool | None = typer.Option(None, "--tie-embeddings/--no-tie-embeddings"),
    share_embeddings: bool | None = typer.Option(None, "--share-embeddings/--no-share-embeddings"),
    optimizer: str | None = typer.Option(None, help="adam or adamw."),
    lr: float | None = typer.Option(None, help="Peak learning rate."),
    weight_decay: float | None = typer.Option(None),
    schedule: str | None = typer.Option(None, help="constant, inverse-sqrt, cosine, linear, plateau."),
    warmup_steps: int | None = typer.Option(None),
    label_smoothing: float | None = typer.Option(None),
    clip_norm: float | None = typer.Option(None),
    batch_tokens: int | None = typer.Option(None, help="Target tokens per batch."),
    valid_every: int | None = typer.Option(None, help="Validate and save every N updates."),
    log_every: int | None = typer.Option(None),
    patience: int | None = typer.Option(None, help="Stop after N validations without a better dev BLEU."),
    keep_last: int | None = typer.Option(None, help="Also keep step-N.nmt of the last K validations."),
    seed: int | None = typer.Option(None),
    vocab_size: int | None = typer.Option(None, help="Subword vocabulary size when training it here."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out where it stopped."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier run in --out."),
    threads: int = typer.Option(0, help="Torch threads (0: OMP_NUM_THREADS or all cores)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and the summary."),
) -> None:
    """Train an LSTM encoder-decoder with attention; the best dev-BLEU model goes to OUT/model.nmt."""
    from nmt_cli.console import setup_logging

    setup_logging(quiet=quiet)
    budget = parse_duration(time_budget)
    model_flags = dict(
        attention=attention,
        input_feeding=input_feeding,
        emb_size=emb_size,
        encoder_hidden=encoder_hidden,
        encoder_layers=encoder_layers,
        encoder_cell=encoder_cell,
        bidirectional=bidirectional,
        decoder_hidden=decoder_hidden,
        decoder_layers=decoder_layers,
        bridge=bridge,
        dropout=dropout,
        tie_embeddings=tie_embeddings,
        share_embeddings=share_embeddings,
    )
    train_flags = dict(
        epochs=epochs,
        max_steps=max_steps,
        time_budget=budget,
        optimizer=optimizer,
        lr=lr,
        weight_decay=weight_decay,
        schedule=schedule,
        warmup_steps=warmup_steps,
        label_smoothing=label_smoothing,
        clip_norm=clip_norm,
        batch_tokens=batch_tokens,
        valid_every=valid_every,
        log_every=log_every,
        patience=patience,
        keep_last=keep_last,
        seed=seed,
        threads=threads or None,
    )
    model_cfg, train_cfg, sub_cfg = merged_configs(
        preset, config, model_flags, train_flags, dict(vocab_size=vocab_size)
    )
    set_threads(train_cfg.threads)
    summary = _run(
        src, tgt, dev_src, dev_tgt, out, spm, model_cfg, train_cfg, sub_cfg, resume, overwrite, quiet
    )
    best = "-" if summary.best_bleu is None else f"{summary.best_bleu:.2f} (step {summary.best_step})"
    write_stdout(
        f"model\t{summary.model_path}\nsteps\t{summary.steps}\nepochs\t{summary.epochs:.2f}\n"
        f"dev_bleu\t{best}\nwall\t{summary.wall:.0f}s\nstopped\t{summary.stopped or 'done'}\n"
    )


def _run(src, tgt, dev_src, dev_tgt, out, spm, model_cfg, train_cfg, sub_cfg, resume, overwrite, quiet):  # noqa: ANN001, ANN202
    """Subword model (given, resumed or trained here), then fit()."""
    from dataclasses import replace

    from nmt_cli.config import DataConfig
    from nmt_cli.subword import Subword, train_spm
    from nmt_cli.train import Run, fit

    if (out / "model.nmt").exists() and not (resume or overwrite):
        raise ConfigError(
            "a trained model is already there; use --resume to continue or --overwrite",
            str(out / "model.nmt"),
        )
    if resume and not (out / "trainer_state.pt").exists():
        raise InputError("nothing to resume: no trainer_state.pt", str(out))
    if overwrite and not resume:
        for stale in [out / "log.jsonl", out / "trainer_state.pt", *out.glob("step-*.nmt")]:
            stale.unlink(missing_ok=True)
    data = DataConfig(str(src), str(tgt), str(dev_src or ""), str(dev_tgt or ""))
    if spm is not None:
        sub = Subword.from_file(spm)
    elif resume:
        sub = Subword.from_file(out / "spm.model")
    else:
        sub = Subword.from_bytes(train_spm([src, tgt], sub_cfg))
    sub.save(out / "spm.model")
    model_cfg = replace(model_cfg, vocab_size=sub.vocab_size)
    return fit(
        Run(data, sub, model_cfg, train_cfg, out), resume=resume, start_time=PROCESS_START, quiet=quiet
    )

"""`nmt train`: flags, a TOML file and a preset merged into configs, then one call to fit()."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from nmt_cli.cli_base import (
    DEVICE_HELP,
    PROCESS_START,
    StopSignals,
    parse_duration,
    set_threads,
    write_stdout,
)
from nmt_cli.config import RESUMABLE
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
    from nmt_cli.config import ModelConfig, SubwordConfig, TrainConfig, from_dict, migrate_model_keys, preset

    raw = read_toml(config_file) if config_file else {}
    name = preset_name or raw.get("preset")
    model, train = preset(name) if name else ({}, {})
    layers = [  # each model layer's old `bridge` made decoder_init first, so that a later layer overrides it
        tuple(migrate_model_keys(x) for x in (model, raw.get("model", {}), model_flags)),
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
    data_dir: Path | None = typer.Option(
        None, "--data", help="A folder written by `nmt prepare`: train from its store and subword model."
    ),
    src: Path | None = typer.Option(
        None, "--src", help="Training corpus, source side (without --data: prepared into OUT first)."
    ),
    tgt: Path | None = typer.Option(None, "--tgt", help="Training corpus, target side."),
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
    attention: str | None = typer.Option(None, help="none, bahdanau, dot, general or scaled-dot."),
    input_feeding: bool | None = typer.Option(None, "--input-feeding/--no-input-feeding"),
    emb_size: int | None = typer.Option(None),
    encoder_hidden: int | None = typer.Option(None, help="Encoder units per direction."),
    encoder_layers: int | None = typer.Option(None),
    cell: str | None = typer.Option(None, "--cell", help="rnn, lstm or gru, encoder and decoder both."),
    encoder_cell: str | None = typer.Option(None, help="rnn, lstm or gru (overrides --cell)."),
    decoder_cell: str | None = typer.Option(None, help="rnn, lstm or gru (overrides --cell)."),
    bidirectional: bool | None = typer.Option(None, "--bidirectional/--unidirectional"),
    decoder_hidden: int | None = typer.Option(None),
    decoder_layers: int | None = typer.Option(None),
    decoder_init: str | None = typer.Option(
        None, help="Decoder's initial state: zero, last (the encoder's final states) or bridge."
    ),
    bridge: bool | None = typer.Option(
        None, "--bridge/--no-bridge", help="Same as --decoder-init bridge / zero.", hidden=True
    ),
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
    batch_tokens: int | None = typer.Option(
        None, help="Padded positions per batch on its longer side (source, or target + EOS)."
    ),
    valid_every: int | None = typer.Option(None, help="Validate and save every N updates."),
    log_every: int | None = typer.Option(None),
    patience: int | None = typer.Option(None, help="Stop after N validations without a better dev BLEU."),
    keep_last: int | None = typer.Option(None, help="Also keep step-N.nmt of the last K validations."),
    save_every_minutes: float | None = typer.Option(None, help="Also save min-M.nmt every M minutes."),
    seed: int | None = typer.Option(None),
    vocab_size: int | None = typer.Option(None, help="Subword vocabulary size when training it here."),
    src_vectors: Path | None = typer.Option(
        None,
        "--src-vectors",
        help="Word vectors for the source embedding (word2vec/GloVe/fastText text, .gz ok).",
    ),
    tgt_vectors: Path | None = typer.Option(
        None, "--tgt-vectors", help="Word vectors for the target embedding."
    ),
    freeze_embeddings: bool | None = typer.Option(
        None, "--freeze-embeddings/--train-embeddings", help="Keep embeddings that took vectors fixed."
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue the run in --out where it stopped, with the same data and settings; only "
        + ", ".join("--" + name.replace("_", "-") for name in RESUMABLE)
        + " and --quiet may change (the limits not under cosine or linear decay).",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an earlier run in --out (once every argument is checked)."
    ),
    threads: int = typer.Option(0, help="Torch threads (0: OMP_NUM_THREADS or all cores)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    precision: str | None = typer.Option(
        None, "--precision", help="fp32 (default), bf16 or fp16: autocast, weights stay fp32."
    ),
    nproc: int = typer.Option(
        0, "--nproc", help="Train as N processes on this machine (DDP, started through torchrun)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and the summary."),
) -> None:
    """Train an LSTM encoder-decoder with attention; the best dev-BLEU model goes to OUT/model.nmt.

    Under torchrun (or with --nproc) each process trains on its share of every update's batches
    (--batch-tokens counts the whole update, all processes together); rank 0 alone writes."""
    if nproc:
        from nmt_cli.distributed import launch

        raise typer.Exit(launch(nproc, _without_nproc(sys.argv[1:])))
    from contextlib import ExitStack
    from dataclasses import replace

    from nmt_cli import distributed
    from nmt_cli.config import DataConfig
    from nmt_cli.console import console, setup_logging
    from nmt_cli.device import resolve
    from nmt_cli.run_files import run_dir_lock
    from nmt_cli.subword import Subword
    from nmt_cli.train import Run, fit
    from nmt_cli.update import Place

    world = distributed.from_env()
    setup_logging(quiet=quiet or not world.main)  # one process reports for the group
    budget = parse_duration(time_budget)
    model_flags = dict(
        attention=attention,
        input_feeding=input_feeding,
        emb_size=emb_size,
        encoder_hidden=encoder_hidden,
        encoder_layers=encoder_layers,
        encoder_cell=encoder_cell or cell,
        decoder_cell=decoder_cell or cell,
        bidirectional=bidirectional,
        decoder_hidden=decoder_hidden,
        decoder_layers=decoder_layers,
        decoder_init=decoder_init,
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
        save_every_minutes=save_every_minutes,
        seed=seed,
        threads=threads or None,
        src_vectors=str(src_vectors) if src_vectors else None,
        tgt_vectors=str(tgt_vectors) if tgt_vectors else None,
        freeze_embeddings=freeze_embeddings,
        precision=precision,
    )
    model_cfg, train_cfg, sub_cfg = merged_configs(
        preset, config, model_flags, train_flags, dict(vocab_size=vocab_size)
    )
    set_threads(train_cfg.threads)
    _check_corpus_options(data_dir, src, tgt, spm, vocab_size)
    place = Place(resolve(device, world.local_rank), world)
    world = distributed.start(world, place.device)
    try:
        with ExitStack() as held:

            def prepare():  # noqa: ANN202 - rank 0's: claim the run directory, check it, then the corpus
                held.enter_context(run_dir_lock(out))  # for the whole run: one training per directory
                _check_run_dir(out, resume, overwrite)  # fit() clears an earlier run once all is checked
                if data_dir is not None:
                    data = _prepared_data(data_dir, dev_src, dev_tgt)
                    sub = _subword(
                        data, out, None if resume else data_dir / "spm.model", sub_cfg, resume, False
                    )
                else:
                    data = DataConfig(
                        str(src), str(tgt), str(dev_src or ""), str(dev_tgt or ""), store=str(out)
                    )
                    sub = _subword(data, out, spm, sub_cfg, resume, shrink_to_fit=vocab_size is None)
                    _store_in_run_dir(data, sub, out, resume)
                return data, sub.to_bytes()

            data, sub_bytes = _on_main(world, prepare)  # rank 0's data and subword model, on every rank
            sub = Subword.from_bytes(sub_bytes)
            model_cfg = replace(model_cfg, vocab_size=sub.vocab_size)
            with StopSignals() as signals:
                summary = fit(
                    Run(data, sub, model_cfg, train_cfg, out),
                    resume=resume,
                    start_time=PROCESS_START,
                    quiet=quiet,
                    interrupt=signals.reason,
                    place=place._replace(world=world),
                )
    finally:
        distributed.stop(world)
    if not world.main:
        if signals.received:
            raise typer.Exit(code=128 + signals.received.value)
        return
    best = "-" if summary.best_bleu is None else f"{summary.best_bleu:.2f} (step {summary.best_step})"
    write_stdout(
        f"model\t{summary.model_path}\nsteps\t{summary.steps}\nepochs\t{summary.epochs:.2f}\n"
        f"dev_bleu\t{best}\nwall\t{summary.wall:.0f}s\nstopped\t{summary.stopped or 'done'}\n"
    )
    if signals.received:
        console.print(
            f"nmt: {signals.received.name}: stopped after step {summary.steps}, resume state saved in "
            f"{out}; to continue, run the same command with --resume",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(code=128 + signals.received.value)


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line with --nproc N (or --nproc=N) left out, for torchrun to run in each process."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            kept.append(arg)
    return kept


def _on_main(world, work):  # noqa: ANN001, ANN202
    """work() on rank 0, its result on every rank; an error there ends every rank, rank 0 alone
    reporting it (one process: work() as it is)."""
    from nmt_cli import distributed
    from nmt_cli.errors import NmtError

    if not world.distributed:
        return work()
    result, failed = None, None
    if world.main:
        try:
            result = work()
        except NmtError as err:
            failed = err
    if distributed.from_main(world, failed is not None):
        if failed is not None:
            raise failed
        raise typer.Exit(code=1)
    return distributed.from_main(world, result)


def _check_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to replace an earlier run unless asked; deleting its files is left to fit()."""
    for name, what in (
        ("model.nmt", "a trained model"),
        ("trainer_state.pt", "an earlier run's resume state"),
    ):
        if (out / name).exists() and not (resume or overwrite):
            raise ConfigError(
                f"{what} is already there; use --resume to continue or --overwrite", str(out / name)
            )
    if resume and not (out / "trainer_state.pt").exists():
        raise InputError("nothing to resume: no trainer_state.pt", str(out))


def _check_corpus_options(data_dir, src, tgt, spm, vocab_size) -> None:  # noqa: ANN001
    if data_dir is not None and (src or tgt):
        raise ConfigError("give --data or --src and --tgt, not both")
    if data_dir is None and not (src and tgt):
        raise ConfigError("give --data PREP_DIR (from `nmt prepare`), or both --src and --tgt")
    if data_dir is not None and (spm or vocab_size):
        raise ConfigError(
            "--data brings its own subword model (PREP_DIR/spm.model): leave out --spm and --vocab-size"
        )


def _prepared_data(data_dir: Path, dev_src: Path | None, dev_tgt: Path | None):  # noqa: ANN202
    """DataConfig of a prepared folder: the store, and the corpus files it was made from (for the record)."""
    from nmt_cli.config import DataConfig
    from nmt_cli.store import read_meta

    corpus = read_meta(data_dir)["corpus"]
    return DataConfig(
        corpus["src"]["path"], corpus["tgt"]["path"], str(dev_src or ""), str(dev_tgt or ""), str(data_dir)
    )


def _store_in_run_dir(data, sub, out: Path, resume: bool) -> None:  # noqa: ANN001
    """The --src/--tgt form: encode the corpus into OUT/store/ once; a resumed run keeps (and checks) it."""
    from nmt_cli.store import META, STORE_DIR, build_store

    if resume and (out / STORE_DIR / META).exists():
        return  # fit() opens it and refuses it if the corpus or subword model changed since
    build_store(data.train_src, data.train_tgt, sub, out)
    sub.save(out / "spm.model")  # a store lives beside its subword model (fit() saves the same bytes)


def _subword(data, out: Path, spm: Path | None, cfg, resume: bool, shrink_to_fit: bool):  # noqa: ANN001, ANN202
    """The subword model: given, the resumed run's, or trained here on both sides of the corpus (fit()
    saves it into the run directory)."""
    from nmt_cli.subword import Subword, train_spm

    if spm is not None:
        return Subword.from_file(spm)
    if resume:
        return Subword.from_file(out / "spm.model")
    return Subword.from_bytes(train_spm([data.train_src, data.train_tgt], cfg, shrink_to_fit=shrink_to_fit))


def default_corpus() -> tuple[Path, Path]:
    """Multi30k de->en (the side-by-side protocol) when present, else the embedded corpus."""
    import os

    root = Path(os.environ.get("NMT_DATA", "../shared/data/multi30k"))
    if (root / "train.de").exists() and (root / "train.en").exists():
        return root / "train.de", root / "train.en"
    here = Path(__file__).resolve().parent.parent / "data"
    return here / "train.en", here / "train.de"


def bench_train(
    preset: str = typer.Option(
        "base-rnn", "--preset", help="Recipe to measure: base-rnn, cpu-15min, toy, tiny."
    ),
    src: Path | None = typer.Option(None, "--src", help="Corpus source side (default: Multi30k train.de)."),
    tgt: Path | None = typer.Option(None, "--tgt", help="Corpus target side (default: Multi30k train.en)."),
    spm: Path | None = typer.Option(
        None, "--spm", help="SentencePiece model; trained here (vocab 8000) if absent."
    ),
    steps: int = typer.Option(60, help="Updates to run."),
    skip: int = typer.Option(10, help="First updates left out of the steady-state figure."),
    input_feeding: bool | None = typer.Option(None, "--input-feeding/--no-input-feeding"),
    batch_tokens: int | None = typer.Option(
        None, help="Padded positions per batch on its longer side (source, or target + EOS)."
    ),
    threads: int = typer.Option(0, help="Torch threads (0: OMP_NUM_THREADS or all cores)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    precision: str | None = typer.Option(None, "--precision", help="fp32 (default), bf16 or fp16."),
    profile: bool = typer.Option(
        False, "--profile", help="Then profile a few updates: where their time goes, as a table."
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object."),
) -> None:
    """Training throughput of a preset as a fraction of this machine's best measured matmul rate."""
    import json
    from dataclasses import replace

    from nmt_cli.benchmark import PROFILE_STEPS
    from nmt_cli.benchmark import bench_train as run_bench
    from nmt_cli.config import SubwordConfig
    from nmt_cli.console import console, setup_logging
    from nmt_cli.data import load_parallel
    from nmt_cli.device import resolve
    from nmt_cli.subword import Subword, train_spm

    setup_logging()
    if skip >= steps:
        raise ConfigError(f"--skip ({skip}) must be below --steps ({steps})")
    set_threads(threads)
    if (src is None) != (tgt is None):
        raise ConfigError("give both --src and --tgt, or neither")
    src, tgt = (src, tgt) if src is not None and tgt is not None else default_corpus()
    model_cfg, train_cfg, _ = merged_configs(
        preset,
        None,
        dict(input_feeding=input_feeding),
        dict(batch_tokens=batch_tokens, precision=precision),
        {},
    )
    where = resolve(device)
    sub = (
        Subword.from_file(spm)
        if spm
        else Subword.from_bytes(train_spm([src, tgt], SubwordConfig(8000), shrink_to_fit=True))
    )
    examples, _ = load_parallel(src, tgt, sub, train_cfg.max_len)
    model_cfg = replace(model_cfg, vocab_size=sub.vocab_size)
    console.print(
        f"bench: {preset} on {src} ({len(examples)} pairs), {steps} steps, first {skip} left out, "
        f"{where}, {train_cfg.precision}"
    )
    r = run_bench(examples, model_cfg, train_cfg, steps, skip, where, PROFILE_STEPS if profile else 0)
    result = dict(
        r._asdict(),
        costs=[c._asdict() for c in r.costs],
        preset=preset,
        corpus=str(src),
        input_feeding=model_cfg.input_feeding,
        attention=model_cfg.attention,
    )
    if as_json:
        write_stdout(json.dumps(result) + "\n")
        return
    best = "oneDNN" if r.onednn_gflops >= r.matmul_gflops else "torch.mm"
    write_stdout(
        f"of the best matmul rate\t{100 * r.best_fraction:.1f} %  "
        f"({r.best_gflops:.1f} GFLOP/s, {best}: the better of torch.mm and oneDNN, 2048²)\n"
        f"steady tok/s\t{r.tok_s:.0f}  (whole run {r.whole_tok_s:.0f}; "
        f"the best rate would allow {r.best_gflops * 1e3 / r.mflop_per_token:.0f})\n"
        f"torch.mm GFLOP/s\t{r.matmul_gflops:.1f}  "
        f"(before {r.matmul_before:.1f}, after {r.matmul_after:.1f})\n"
        f"MFLOP/token\t{r.mflop_per_token:.1f}  (forward + backward, analytic)\n"
        f"of torch.mm\t{100 * r.fraction:.1f} %\n"
        f"oneDNN GFLOP/s\t{r.onednn_gflops:.1f}  ({100 * r.onednn_fraction:.1f} % of this rate)\n"
        f"padding\t{100 * r.padding:.2f} %  ({r.tokens_per_step:.0f} real target tokens per step)\n"
        f"peak RSS\t{r.peak_rss_mb:.0f} MB\nthreads\t{r.threads}\n"
        f"device\t{r.device}  ({r.precision})\nkernels\t{r.kernels}"
        f"  ({'NMT_PLAIN=1 runs the plain model' if r.kernels == 'cpu' else 'the plain model'})\n"
        f"LSTM cell\t{r.lstm_cell}\n"
    )
    if r.costs:
        _cost_table(r.costs)


def _cost_table(costs: tuple[Any, ...]) -> None:
    """Where a profiled update's time went, as a rich table on stdout."""
    from rich.console import Console
    from rich.table import Table

    from nmt_cli.benchmark import PROFILE_STEPS

    title = (
        f"where an update's time goes: {PROFILE_STEPS} updates under torch.profiler (slower; read the shares)"
    )
    table = Table(title=title, title_justify="left", box=None)
    for name, justify in (
        ("cost centre", "left"),
        ("ms/update", "right"),
        ("share", "right"),
        ("largest", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for c in costs:
        largest = ", ".join(f"{op} {100 * part:.0f} %" for op, part in c.largest)
        table.add_row(c.name, f"{c.ms_per_update:.1f}", f"{100 * c.share:.1f} %", largest)
    Console(file=sys.stdout, width=160).print(table)

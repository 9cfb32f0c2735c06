"""`nmt info`, `nmt tune` and `nmt average`: what a model file holds, which decoding settings suit it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from nmt_cli.cli_base import DEVICE_HELP, resolve_device, set_threads, write_stdout
from nmt_cli.errors import ConfigError


def info(
    model: Path = typer.Argument(..., help="A model.nmt file."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object with everything the file records."),
) -> None:
    """Architecture, parameters, vocabulary, training data, steps, dev scores and versions of a model."""
    import hashlib
    from dataclasses import asdict

    from nmt_cli.checkpoint import read_info

    cfg, facts, metadata = read_info(model)  # the header only: the model is not built
    record = {
        "path": str(model),
        "model": hashlib.sha256(model.read_bytes()).hexdigest()[:8],  # as decoding signatures name it
        "bytes": model.stat().st_size,
        "format": metadata.get("format"),
        "version": metadata.get("version"),
        "config": asdict(cfg),
        "info": _parsed(facts),
    }
    write_stdout(json.dumps(record, ensure_ascii=False) + "\n" if as_json else _info_text(record))


def _parsed(facts: dict[str, Any]) -> dict[str, Any]:
    """The info dict with train_config (stored as a JSON string) as an object."""
    if isinstance(facts.get("train_config"), str):
        return {**facts, "train_config": json.loads(facts["train_config"])}
    return facts


def _info_text(r: dict[str, Any]) -> str:
    c, i = r["config"], r["info"]
    encoder = f"{'bidirectional ' if c['bidirectional'] else ''}{c['encoder_cell'].upper()}"
    rows = [
        ("model", f"{r['path']} (model:{r['model']}, {r['bytes'] / 1e6:.1f} MB, {r['format']})"),
        (
            "architecture",
            f"{encoder} encoder {c['encoder_layers']}x{c['encoder_hidden']}, "
            f"{c.get('decoder_cell', 'lstm').upper()} decoder {c['decoder_layers']}x{c['decoder_hidden']}, "
            f"{c['attention']} attention, "
            f"embeddings {c['emb_size']}, input feeding {_on(c['input_feeding'])}, "
            f"decoder init {c['decoder_init']}, dropout {c['dropout']}",
        ),
        ("parameters", f"{i['parameters']:,}" if "parameters" in i else "?"),
        ("vocabulary", f"{c['vocab_size']} subwords, one joint SentencePiece model"),
    ]
    if "step" in i:
        rows.append(
            (
                "training",
                f"{i['step']} steps, {i.get('epochs', '?')} epochs, {i.get('tokens', 0):,} target "
                f"tokens, {i.get('wall', '?')} s",
            )
        )
    if "world_size" in i:
        backend = f", {i.get('backend')}" if i["world_size"] > 1 else ""
        rows.append(
            (
                "trained on",
                f"{i.get('device', '?')}, {i.get('precision', 'fp32')}, "
                f"world_size: {i['world_size']}{backend}, kernels {i.get('kernels', '?')}",
            )
        )
    if i.get("dev_bleu") is not None:
        kept = i.get("train_config", {}).get("valid_max_sentences")
        where = f"first {kept} dev lines, greedy" if kept else "dev set, greedy"
        rows.append(("dev BLEU", f"{i['dev_bleu']:.2f} ({where}) BLEU|{i.get('bleu_signature', '')}"))
    if "dev_loss" in i:
        rows.append(("dev loss", f"{i['dev_loss']} per token (ppl {i.get('dev_ppl')})"))
    data = i.get("data", {})
    files = [(side, d) for side, d in data.items() if isinstance(d, dict)]  # a store adds store, lines
    for k, (side, d) in enumerate(files):
        rows.append(
            ("data" if k == 0 else "", f"{side} {d['path']}: {d['lines']} lines, sha256 {d['sha256']}")
        )
    if "store" in data:
        rows.append(("", f"read from the store in {data['store']}"))
    rows.append(("versions", f"nmt {i.get('nmt', r['version'])}, torch {i.get('torch', '?')}"))
    return "".join(f"{key:<13}{value}\n" for key, value in rows)


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def tune(
    model: Path = typer.Option(..., "-m", "--model", help="A model.nmt file."),
    src: Path = typer.Option(..., "--src", help="Dev source lines."),
    ref: Path = typer.Option(..., "--ref", help="Dev references."),
    beam_sweep: str = typer.Option("1,2,5,10", help="Beam sizes to try, comma-separated."),
    alpha_sweep: str = typer.Option("0,0.6,1.0", help="Length penalties (alpha) to try with beams > 1."),
    batch_size: int = typer.Option(64, help="Sentences per batch."),
    int8: bool = typer.Option(False, "--int8", help="Decode with int8 layers, as translate --int8."),
    shortlist: int = typer.Option(0, "--shortlist", help="As translate --shortlist K (0: full vocabulary)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object with every setting's numbers."),
    threads: int = typer.Option(0, help="Torch threads (0: OMP_NUM_THREADS or all cores)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or per-setting lines on stderr."),
) -> None:
    """Translate a dev set with each beam size and alpha: BLEU, length ratio, empty outputs, time."""
    from nmt_cli import analysis
    from nmt_cli.checkpoint import load_model
    from nmt_cli.config import DecodeConfig
    from nmt_cli.console import console, progress
    from nmt_cli.textio import read_parallel
    from nmt_cli.translate import for_decoding, shortlist_setting

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    beams = _numbers(beam_sweep, "--beam-sweep", int)
    alphas = _numbers(alpha_sweep, "--alpha-sweep", float)
    fixed = dict(shortlist=shortlist)
    settings = [DecodeConfig(beam_size=1, **fixed)] if 1 in beams else []  # alpha never changes greedy
    settings += [
        DecodeConfig(beam_size=b, length_penalty=a, **fixed) for b in beams if b != 1 for a in alphas
    ]
    src_lines, refs = read_parallel(src, ref)
    set_threads(threads)
    loaded = for_decoding(load_model(model, device=resolve_device(device)), int8)
    columns = shortlist_setting(loaded, settings[0])
    rows = []
    with progress(quiet) as bar:
        task = bar.add_task("tune", total=len(settings))
        for cfg in settings:
            [row] = analysis.sweep(loaded, src_lines, refs, [cfg], batch_size, columns)
            if not quiet:
                console.print(
                    f"beam {cfg.beam_size} alpha {_alpha(row)}: BLEU {row.bleu:.2f}", highlight=False
                )
            rows.append(row)
            bar.advance(task)
    if as_json:
        record = {"model": loaded.digest, "signature": rows[0].signature, "lines": len(src_lines)}
        record.update(int8=int8, shortlist=shortlist)
        record["rows"] = [{k: v for k, v in r._asdict().items() if k != "signature"} for r in rows]
        write_stdout(json.dumps(record) + "\n")
    else:
        write_stdout(_tune_table(rows))


def _numbers(text: str, option: str, kind: type) -> list:
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or min(values) < (1 if kind is int else 0):
        raise ConfigError(
            f"{option} takes comma-separated {'beam sizes' if kind is int else 'alphas'}, got {text!r}"
        )
    return list(dict.fromkeys(values))


def _alpha(row: Any) -> str:
    return "-" if row.length_penalty is None else f"{row.length_penalty:g}"


def _tune_table(rows: list[Any]) -> str:
    """Aligned columns, the best BLEU marked; the BLEU signature last."""
    best = max(range(len(rows)), key=lambda k: rows[k].bleu)
    lines = [f"{'beam':>4} {'alpha':>5} {'BLEU':>7} {'ratio':>6} {'empty':>5} {'seconds':>8}"]
    for k, r in enumerate(rows):
        numbers = f"{r.bleu:>7.2f} {r.ratio:>6.3f} {r.empty:>5} {r.seconds:>8.2f}"
        lines.append(f"{r.beam_size:>4} {_alpha(r):>5} {numbers}" + ("  best" if k == best else ""))
    lines.append(f"BLEU|{rows[best].signature}")
    return "".join(line + "\n" for line in lines)


def average(
    models: list[Path] = typer.Argument(..., help="Model files to average (e.g. runs/x/step-*.nmt)."),
    output: Path = typer.Option(..., "-o", "--output", help="The averaged model file."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress on stderr."),
) -> None:
    """Average the weights of several checkpoints of one run into one model file."""
    from nmt_cli.checkpoint import average_models, save_model
    from nmt_cli.console import working

    with working(f"average: {len(models)} model files", quiet):
        averaged = average_models([str(m) for m in models])
        save_model(output, averaged.model, averaged.subword, averaged.info)
    write_stdout(f"{output}\n")

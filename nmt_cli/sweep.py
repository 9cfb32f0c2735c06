"""`nmt sweep`: train a grid of configurations under one budget each, score each cell, resume cell by cell.

Each cell (one setting of the grid keys, one seed) trains in OUT/cells/NAME with the sweep's one
SentencePiece model and ends with OUT/cells/NAME/result.json, written last and atomically: a killed sweep
run again skips the cells that have it and starts the others afresh.
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

from nmt_cli.align import alignment_error_rate, parse_pharaoh
from nmt_cli.analysis import align, forced_attention, translation_attention
from nmt_cli.checkpoint import load_model
from nmt_cli.config import DataConfig, DecodeConfig, ModelConfig, SubwordConfig, TrainConfig, from_dict
from nmt_cli.errors import ConfigError
from nmt_cli.metrics import bleu_interval
from nmt_cli.model import count_parameters
from nmt_cli.subword import Subword, train_spm
from nmt_cli.textio import read_lines, write_text_atomic
from nmt_cli.train import Run, fit

log = logging.getLogger(__name__)

ALIASES = {"cell": ("encoder_cell", "decoder_cell")}  # one grid key setting several config fields
MODEL_KEYS = {f.name: f.type for f in fields(ModelConfig)} | {"cell": "str", "bridge": "bool"}
TRAIN_KEYS = {f.name: f.type for f in fields(TrainConfig)}
Grid = dict[str, tuple[Any, ...]]  # key -> values, in the order given


@dataclass(frozen=True)
class SweepSpec:
    """What every cell shares: data, fixed config overrides (preset included), seeds, scoring."""

    data: DataConfig
    test_src: str = ""
    test_tgt: str = ""
    dev_align: str = ""  # gold Pharaoh alignments of the dev pair ("" or a missing file: no AER)
    test_align: str = ""
    model: tuple[tuple[str, Any], ...] = ()  # fixed ModelConfig overrides, under the grid's
    train: tuple[tuple[str, Any], ...] = ()  # fixed TrainConfig overrides
    vocab_size: int = 8000
    seeds: int = 1
    beam_size: int = 1
    n_bootstrap: int = 1000


class Cell(NamedTuple):
    settings: tuple[tuple[str, Any], ...]  # (grid key, value), in grid order
    seed: int  # 0 .. seeds-1, added to the train seed

    @property
    def name(self) -> str:
        return "_".join(f"{k}-{_text(v)}" for k, v in self.settings) + f"_seed-{self.seed}"


def parse_value(key: str, text: str) -> Any:  # noqa: ANN401 - a config field's scalar
    """A grid value as its config field's type: bool (true/false, on/off, yes/no), int, float or str."""
    kind = str(MODEL_KEYS.get(key) or TRAIN_KEYS.get(key))
    text = text.strip()
    try:
        if kind == "bool":
            return {"true": True, "on": True, "yes": True, "false": False, "off": False, "no": False}[
                text.lower()
            ]
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except (KeyError, ValueError):
        raise ConfigError(f"grid key {key} takes {kind} values, got {text!r}") from None
    if not text:
        raise ConfigError(f"grid key {key} has an empty value")
    return text


def parse_grid(items: list[str] | dict[str, list[Any]]) -> Grid:
    """`--grid key=v1,v2` strings (or a TOML [grid] table) -> {key: values}; keys are ModelConfig or
    TrainConfig fields, or `cell` (encoder and decoder cell together)."""
    pairs: list[tuple[str, list[str]]] = []
    if isinstance(items, dict):
        for key, values in items.items():
            values = values if isinstance(values, list) else [values]
            pairs.append((key, [str(v).lower() if isinstance(v, bool) else str(v) for v in values]))
    else:
        for item in items:
            key, sep, values = item.partition("=")
            if not sep:
                raise ConfigError(f"--grid takes key=value1,value2,..., got {item!r}")
            pairs.append((key.strip(), values.split(",")))
    grid: Grid = {}
    for key, values in pairs:
        if key not in MODEL_KEYS and key not in TRAIN_KEYS or key in ("vocab_size", "seed"):
            valid = sorted(set(MODEL_KEYS) | set(TRAIN_KEYS) - {"vocab_size", "seed"})
            raise ConfigError(f"unknown grid key {key!r}; valid: {', '.join(valid)}")
        if key in grid:
            raise ConfigError(f"grid key {key} is given twice")
        grid[key] = tuple(dict.fromkeys(parse_value(key, v) for v in values))
    if not grid:
        raise ConfigError("the grid is empty: give --grid key=v1,v2 or a TOML file with a [grid] table")
    return grid


def cells(grid: Grid, seeds: int) -> list[Cell]:
    """Every combination of the grid's values (first key slowest), each seed in turn."""
    combos: list[tuple[tuple[str, Any], ...]] = [()]
    for key, values in grid.items():
        combos = [(*c, (key, v)) for c in combos for v in values]
    return [Cell(c, s) for c in combos for s in range(seeds)]


def configs(
    spec: SweepSpec, cell: Cell, preset: dict[str, Any], vocab_size: int
) -> tuple[ModelConfig, TrainConfig]:
    """The cell's configs: preset < the spec's fixed overrides < the grid's settings < seed."""
    model_raw, train_raw = dict(preset["model"]), dict(preset["train"])
    for key, value in (*spec.model, *spec.train, *cell.settings):
        if key == "bridge":  # the old bool, as decoder_init (config.migrate_model_keys)
            key, value = "decoder_init", "bridge" if value else "zero"
        for name in ALIASES.get(key, (key,)):
            (model_raw if name in MODEL_KEYS else train_raw)[name] = value
    model = from_dict(ModelConfig, {**model_raw, "vocab_size": vocab_size})
    train = from_dict(TrainConfig, train_raw)
    return model, from_dict(TrainConfig, {**asdict(train), "seed": train.seed + cell.seed})


def run_sweep(spec: SweepSpec, grid: Grid, preset: dict[str, Any], out: Path) -> list[dict[str, Any]]:
    """Run (or skip, when finished) every cell; -> one result dict per cell, in grid order."""
    out.mkdir(parents=True, exist_ok=True)
    sub = _subword(spec, out)
    todo = cells(grid, spec.seeds)
    results = []
    for n, cell in enumerate(todo, start=1):
        model_cfg, train_cfg = configs(spec, cell, preset, sub.vocab_size)
        done = out / "cells" / cell.name / "result.json"
        if done.exists():
            result = json.loads(done.read_text(encoding="utf-8"))
            if result["model_config"] != asdict(model_cfg) or result["train_config"] != asdict(train_cfg):
                raise ConfigError("this finished cell ran other settings; sweep into a new --out", str(done))
            log.info("cell %d/%d %s: done before, skipped", n, len(todo), cell.name)
        else:
            log.info("cell %d/%d %s: training", n, len(todo), cell.name)
            result = run_cell(spec, cell, Run(spec.data, sub, model_cfg, train_cfg, done.parent))
            write_text_atomic(done, json.dumps(result, indent=1) + "\n")
        results.append(result)
    return results


def run_cell(spec: SweepSpec, cell: Cell, run: Run) -> dict[str, Any]:
    """Train one cell from scratch, then score its best-dev model: BLEU with intervals, AER, speed."""
    shutil.rmtree(run.out_dir, ignore_errors=True)  # a cell killed half-way starts again
    summary = fit(run, quiet=True)
    loaded = load_model(summary.model_path)
    result: dict[str, Any] = {
        "cell": cell.name,
        "settings": dict(cell.settings),
        "seed": cell.seed,
        "model_config": asdict(run.model_cfg),
        "train_config": asdict(run.train_cfg),
        "parameters": count_parameters(loaded.model),
        "steps": summary.steps,
        "tokens_per_s": summary.tokens / summary.wall if summary.wall else 0.0,
        "wall_s": summary.wall,
    }
    decode = DecodeConfig(beam_size=spec.beam_size)
    splits = [("dev", spec.data.dev_src, spec.data.dev_tgt, spec.dev_align)]
    splits.append(("test", spec.test_src, spec.test_tgt, spec.test_align))
    for split, src_path, tgt_path, gold_path in splits:
        if not src_path:
            continue
        src, refs = read_lines(src_path), read_lines(tgt_path)
        began = time.perf_counter()
        hyps = [p.tgt for p in translation_attention(loaded, src, decode)]
        result[f"{split}_decode_s"] = time.perf_counter() - began
        write_text_atomic(run.out_dir / f"{split}.hyp", "".join(h + "\n" for h in hyps))
        bleu = bleu_interval(hyps, [refs], spec.n_bootstrap, seed=12345)
        result.update(
            {f"{split}_bleu": bleu.score, f"{split}_bleu_ci": bleu.ci, "bleu_signature": bleu.signature}
        )
        result[f"{split}_aer"] = _aer(loaded, src, refs, gold_path)
    return result


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per grid setting: each measure's mean over seeds, its sd (0 for one seed), the seeds."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(json.dumps(r["settings"]), []).append(r)
    rows = []
    for key, group in groups.items():
        row: dict[str, Any] = {"settings": json.loads(key), "seeds": len(group)}
        for measure in MEASURES:
            values = [r[measure] for r in group if r.get(measure) is not None]
            row[measure] = statistics.fmean(values) if values else None
            row[f"{measure}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


MEASURES = (
    "dev_bleu", "dev_bleu_ci", "test_bleu", "test_bleu_ci", "dev_aer", "test_aer",
    "parameters", "tokens_per_s", "wall_s", "steps",
)  # fmt: skip


def _aer(loaded: Any, src: list[str], refs: list[str], gold_path: str) -> float | None:  # noqa: ANN401
    """AER of the attention while forced-decoding the references, against gold links; None without
    gold alignments or attention."""
    if not gold_path or not Path(gold_path).is_file() or loaded.config.attention == "none":
        return None
    gold = [parse_pharaoh(line, gold_path, n) for n, line in enumerate(read_lines(gold_path), start=1)]
    if len(gold) != len(src):
        raise ConfigError(f"{len(gold)} gold alignment lines for {len(src)} sentence pairs", gold_path)
    predicted = [align(pair, "word").links for pair in forced_attention(loaded, src, refs)]
    return alignment_error_rate(predicted, gold)


def _subword(spec: SweepSpec, out: Path) -> Subword:
    """The sweep's one SentencePiece model, trained on the training corpus the first time."""
    path = out / "spm.model"
    if path.exists():
        return Subword.from_file(path)
    blob = train_spm(
        [spec.data.train_src, spec.data.train_tgt], SubwordConfig(spec.vocab_size), shrink_to_fit=True
    )
    sub = Subword.from_bytes(blob)
    sub.save(path)
    return sub


def _text(value: Any) -> str:  # noqa: ANN401
    return ("on" if value else "off") if isinstance(value, bool) else str(value).replace("/", "-")

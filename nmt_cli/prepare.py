"""prepare_corpus(): check a parallel corpus, optionally filter it, train the joint SentencePiece model
on a sample of it, and encode it once into a store (nmt_cli.store) for training."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from nmt_cli.config import SubwordConfig
from nmt_cli.data import LONG_WORDS, MAX_RATIO, scan_corpus
from nmt_cli.errors import ConfigError
from nmt_cli.store import build_store
from nmt_cli.subword import MAX_SENTENCES, Subword, train_spm
from nmt_cli.textio import atomic_write, iter_parallel, write_text_atomic

log = logging.getLogger(__name__)


class PrepareOptions(NamedTuple):
    sample_sentences: int = MAX_SENTENCES  # lines the subword model is trained on (a seeded sample)
    long_words: int = LONG_WORDS
    max_ratio: float = MAX_RATIO
    filter: bool = False  # write the pairs without any flagged problem to out_dir and prepare those
    spm: Path | None = None  # an existing subword model to encode with, instead of training one


def prepare_corpus(
    src: Path, tgt: Path, out_dir: Path, cfg: SubwordConfig, opts: PrepareOptions = PrepareOptions()
) -> dict[str, Any]:
    """Write out_dir/spm.model, out_dir/store/ and out_dir/prepare.json; return the report."""
    began = time.time()
    report, flagged = scan_corpus(src, tgt, opts.long_words, opts.max_ratio)
    result: dict[str, Any] = {"corpus": report._asdict()}
    if opts.filter:
        src, tgt = filter_corpus(src, tgt, flagged, out_dir)
        result["filtered"] = {"src": str(src), "tgt": str(tgt), "kept": int((~flagged).sum())}
        kept = result["filtered"]["kept"]
        log.info("filtered: %d of %d pairs kept in %s and %s", kept, len(flagged), src, tgt)
    checked = time.time()
    if opts.spm is not None:
        sub = Subword.from_file(opts.spm)
    else:
        sub = Subword.from_bytes(train_spm([src, tgt], cfg, max_sentences=opts.sample_sentences))
    sub.save(out_dir / "spm.model")
    trained = time.time()
    meta = build_store(src, tgt, sub, out_dir)
    result["subword"] = {
        "model": str(out_dir / "spm.model"),
        "vocab_size": sub.vocab_size,
        "model_type": cfg.model_type if opts.spm is None else "given",
        "sample_sentences": opts.sample_sentences,
        "seconds": round(trained - checked, 2),
    }
    result["store"] = {
        "path": str(out_dir / "store"),
        "pairs": meta["pairs"],
        "skipped_empty": meta["skipped_empty"],
        "dtype": meta["dtype"],
        "src_tokens": meta["src_tokens"],
        "tgt_tokens": meta["tgt_tokens"],
        "src_unk": meta["src_unk"],
        "tgt_unk": meta["tgt_unk"],
        "seconds": round(time.time() - trained, 2),
    }
    result["seconds"] = round(time.time() - began, 2)
    write_text_atomic(out_dir / "prepare.json", json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    log.info("%s", report.as_text())  # once prepared: a failed prepare says only what failed, in one line
    return result


def filter_corpus(src: Path, tgt: Path, flagged: np.ndarray, out_dir: Path) -> tuple[Path, Path]:
    """Write the unflagged pairs to out_dir/NAME.filtered.EXT for both sides; return the two paths.

    Lines are written back as read, ending in '\\n' (a '\\r' before it is not kept)."""
    paths = [out_dir / f"{p.stem}.filtered{p.suffix}" for p in (src, tgt)]
    if paths[0] == paths[1]:
        raise ConfigError(f"both sides would be filtered into {paths[0]}: give the files different names")
    keep = (~flagged).tolist()
    with atomic_write(paths[0]) as fs, atomic_write(paths[1]) as ft:
        for ok, (s, t) in zip(keep, iter_parallel(src, tgt), strict=True):
            if ok:
                fs.write(f"{s}\n".encode())
                ft.write(f"{t}\n".encode())
    return paths[0], paths[1]

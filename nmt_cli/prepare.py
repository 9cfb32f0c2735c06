"""prepare_corpus(): check a parallel corpus and train the joint SentencePiece model on it."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from nmt_cli.config import SubwordConfig
from nmt_cli.data import check_corpus
from nmt_cli.subword import Subword, train_spm
from nmt_cli.textio import write_text_atomic

log = logging.getLogger(__name__)


def prepare_corpus(src: Path, tgt: Path, out_dir: Path, cfg: SubwordConfig) -> dict[str, Any]:
    """Write out_dir/spm.model and out_dir/prepare.json; return the report."""
    report = check_corpus(src, tgt)
    log.info("%s", report.as_text())
    began = time.time()
    sub = Subword.from_bytes(train_spm([src, tgt], cfg))
    sub.save(out_dir / "spm.model")
    result = {
        "corpus": report._asdict(),
        "subword": {
            "model": str(out_dir / "spm.model"),
            "vocab_size": sub.vocab_size,
            "model_type": cfg.model_type,
            "seconds": round(time.time() - began, 2),
        },
    }
    write_text_atomic(out_dir / "prepare.json", json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return result

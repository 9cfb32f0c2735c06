"""Shared fixtures: a small slice of the embedded corpus and one tiny model trained on it once."""

from __future__ import annotations

import os
from pathlib import Path

# idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning made the suite
# up to 10x slower (set before torch starts its thread pool)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch

from nmt_cli.config import DataConfig, ModelConfig, SubwordConfig, TrainConfig
from nmt_cli.subword import Subword, train_spm
from nmt_cli.train import Run, fit

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))


def head(src: Path, dst: Path, n: int) -> Path:
    with open(src, "rb") as f:
        dst.write_bytes(b"".join(f.readline() for _ in range(n)))
    return dst


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> DataConfig:
    """1,500 training pairs and 60 dev pairs from data/."""
    d = tmp_path_factory.mktemp("corpus")
    return DataConfig(
        str(head(DATA / "train.en", d / "train.en", 1500)),
        str(head(DATA / "train.de", d / "train.de", 1500)),
        str(head(DATA / "dev.en", d / "dev.en", 60)),
        str(head(DATA / "dev.de", d / "dev.de", 60)),
    )


@pytest.fixture(scope="session")
def subword(corpus) -> Subword:
    return Subword.from_bytes(train_spm([corpus.train_src, corpus.train_tgt], SubwordConfig(vocab_size=200)))


def cpu_model(cfg: ModelConfig):
    """build_model(cfg) with the CPU swaps installed, whatever NMT_PLAIN says (tests of the swaps)."""
    from nmt_cli.cpu.model import CpuEncoder, CpuSeq2Seq
    from nmt_cli.model import build_model

    model = build_model(cfg)
    saved = os.environ.pop("NMT_PLAIN", None)
    try:
        from nmt_cli import cpu

        cpu.install(model)
    finally:
        if saved is not None:
            os.environ["NMT_PLAIN"] = saved
    assert isinstance(model, CpuSeq2Seq) and isinstance(model.encoder, CpuEncoder)
    return model


def tiny_model_config(vocab_size: int, **overrides) -> ModelConfig:
    base = dict(
        vocab_size=vocab_size,
        emb_size=64,
        encoder_hidden=64,
        decoder_hidden=128,
        dropout=0.0,
        input_feeding=False,
    )
    return ModelConfig(**{**base, **overrides})


@pytest.fixture(scope="session")
def trained(tmp_path_factory, corpus, subword) -> Path:
    """A tiny model trained for 150 steps: enough to produce real, varied output, not good output."""
    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(
        lr=1e-2,
        schedule="inverse-sqrt",
        warmup_steps=20,
        batch_tokens=1150,  # the longer side, here the source: about 950 target tokens per batch
        max_steps=150,
        valid_every=75,
        log_every=10,
        valid_max_sentences=20,
    )
    fit(Run(corpus, subword, tiny_model_config(subword.vocab_size), cfg, out), quiet=True)
    # step 150's model: model.nmt is the best of the two validations by dev BLEU, which this close to
    # zero is a coin toss, and step 75's translates the dev set to a handful of distinct lines
    return out / "last.nmt"


# `nmt train` arguments for CLI runs: a tiny model that validates every 4 updates on 8 dev sentences
# and logs every update
RUN_TOML = """
[model]
emb_size = 32
encoder_hidden = 32
decoder_hidden = 64
dropout = 0.2
input_feeding = false

[train]
lr = 5e-3
batch_tokens = 400
valid_every = 4
valid_max_sentences = 8
log_every = 1
"""


@pytest.fixture
def train_args(tmp_path, corpus, subword):
    """The command's fixed arguments: corpus, dev set, subword model and the run file."""
    (tmp_path / "run.toml").write_text(RUN_TOML)
    subword.save(tmp_path / "spm.model")
    return [
        "--src", corpus.train_src, "--tgt", corpus.train_tgt,
        "--dev-src", corpus.dev_src, "--dev-tgt", corpus.dev_tgt,
        "--spm", tmp_path / "spm.model", "--config", tmp_path / "run.toml", "--quiet",
    ]  # fmt: skip

"""Training throughput against the machine's own limit: tokens/s, matmul rate, FLOPs per token, RSS."""

from __future__ import annotations

import resource
import sys
import time
from typing import NamedTuple

import torch

from nmt_cli import cpu
from nmt_cli.config import ModelConfig, TrainConfig
from nmt_cli.data import Example, collate, padding_fraction, token_batches
from nmt_cli.train import Place, build_optimizer, place_model, train_step


class TrainBench(NamedTuple):
    steps: int
    measured_steps: int
    tok_s: float  # steady state: real target tokens / seconds, first `skip` steps left out
    whole_tok_s: float  # all steps, start-up of the loop included
    matmul_gflops: float  # best-of-5 fp32 2048x2048 torch.mm rate, the mean of before and after
    matmul_before: float
    matmul_after: float
    mflop_per_token: float  # forward + backward, analytic
    fraction: float  # steady useful GFLOP/s over the matmul rate
    onednn_gflops: float  # the same best-of-5 rate through gemm.mm (oneDNN); 0 where it is not there
    onednn_fraction: float  # steady useful GFLOP/s over that rate (the products run there)
    padding: float  # share of target positions that are padding
    tokens_per_step: float
    peak_rss_mb: float
    threads: int
    kernels: str  # "cpu" with the CPU swaps, "plain" without (NMT_PLAIN=1, another device, bf16/fp16)
    device: str
    precision: str


def matmul_rate(size: int = 2048, runs: int = 5, calls: int = 10, product=torch.mm) -> float:  # noqa: ANN001
    """Attainable fp32 GFLOP/s: best of `runs` timings of `calls` torch.mm (BENCHMARKS-PEERS.md §2), or of
    another product of two matrices."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        product(a, b)
    best = 0.0
    for _ in range(runs):
        began = time.perf_counter()
        for _ in range(calls):
            product(a, b)
        best = max(best, 2 * size**3 * calls / (time.perf_counter() - began) / 1e9)
    return best


def onednn_rate() -> float:
    """matmul_rate through oneDNN (cpu.gemm.mm), where this torch has it and NMT_PLAIN is not set; else 0."""
    if not cpu.wanted():
        return 0.0
    from nmt_cli.cpu import gemm

    return matmul_rate(product=gemm.mm) if gemm.backend() == "onednn" else 0.0


GATES = {"rnn": 1, "gru": 3, "lstm": 4}  # weight blocks per cell: tanh RNN, GRU (r, z, n), LSTM (i, f, g, o)


def lstm_macs(inputs: int, hidden: int, cell: str = "lstm") -> int:
    return GATES[cell] * hidden * (inputs + hidden)


def forward_macs_per_token(cfg: ModelConfig, src_per_tgt: float) -> float:
    """Multiply-adds of one target token's forward pass (embedding lookups, softmax, loss left out)."""
    H, M, S = cfg.decoder_hidden, cfg.memory_size, 15  # S: typical source length, for scores only
    feed = H if cfg.input_feeding else 0
    cell = cfg.decoder_cell
    decoder = lstm_macs(cfg.emb_size + feed, H, cell) + (cfg.decoder_layers - 1) * lstm_macs(H, H, cell)
    attention = (M + H) * H + 2 * S * M if cfg.attention != "none" else H * H  # [c; h] -> H, scores, context
    attention += {"general": M * H * src_per_tgt, "bahdanau": H * H + M * H * src_per_tgt + S * H}.get(
        cfg.attention, 0
    )
    dirs = 2 if cfg.bidirectional else 1
    enc_layers = [
        lstm_macs(cfg.emb_size if i == 0 else dirs * cfg.encoder_hidden, cfg.encoder_hidden, cfg.encoder_cell)
        for i in range(cfg.encoder_layers)
    ]
    encoder = dirs * sum(enc_layers) * src_per_tgt
    return decoder + attention + H * cfg.vocab_size + encoder


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def bench_train(
    examples: list[Example],
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    steps: int,
    skip: int,
    device: torch.device = torch.device("cpu"),
) -> TrainBench:
    """Train `steps` real updates on length-bucketed batches; time the ones after the first `skip`."""
    torch.manual_seed(train_cfg.seed)
    model, kernels, engine = place_model(model_cfg, train_cfg, Place(device))
    model.train()
    optimizer = build_optimizer(model, train_cfg)
    batches = token_batches(examples, train_cfg.batch_tokens, train_cfg.seed, epoch=0)
    batches = (batches * (steps // len(batches) + 1))[:steps]
    before = matmul_rate()
    onednn = onednn_rate()
    tokens = steady_tokens = 0
    began = time.perf_counter()
    for i, indices in enumerate(batches):
        if i == skip:
            steady_start, steady_tokens = time.perf_counter(), 0
        batch = collate([examples[j] for j in indices])
        train_step(model, optimizer, batch, train_cfg, train_cfg.lr, engine)
        tokens, steady_tokens = tokens + batch.n_tokens, steady_tokens + batch.n_tokens
    _synchronize(device)
    end = time.perf_counter()
    after = matmul_rate()
    src_per_tgt = sum(len(e.src) for e in examples) / sum(len(e.tgt) + 1 for e in examples)
    mflop = 3 * 2 * forward_macs_per_token(model_cfg, src_per_tgt) / 1e6
    tok_s = steady_tokens / (end - steady_start)
    rate = (before + after) / 2
    useful_gflops = tok_s * mflop / 1e3
    return TrainBench(
        steps,
        steps - skip,
        tok_s,
        tokens / (end - began),
        rate,
        before,
        after,
        mflop,
        useful_gflops / rate,
        onednn,
        useful_gflops / onednn if onednn else 0.0,
        padding_fraction(batches, examples),
        tokens / steps,
        peak_rss_mb(),
        torch.get_num_threads(),
        kernels,
        str(device),
        train_cfg.precision,
    )


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that the clock covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)

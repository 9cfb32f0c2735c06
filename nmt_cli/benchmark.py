"""Training throughput against the machine's own limit: tokens/s, matmul rate, FLOPs per token, RSS; and
where an update's time goes (torch.profiler's ops summed into a few cost centres)."""

from __future__ import annotations

import os
import resource
import sys
import time
from collections import Counter
from typing import Any, NamedTuple

import torch

from nmt_cli import cpu
from nmt_cli.config import ModelConfig, TrainConfig
from nmt_cli.data import Example, collate, padding_fraction, token_batches
from nmt_cli.update import Engine, Place, build_optimizer, place_model, train_step


class CostCentre(NamedTuple):
    name: str  # one of BUCKETS
    ms_per_update: float
    share: float  # of the profiled updates' wall time
    largest: tuple[tuple[str, float], ...]  # the bucket's largest ops or scopes, each with its share of it


# What an update spends its time on. products: the matrix products, and the fused RNN kernels, which are
# mostly products; elementwise: every other tensor op (activations, softmax and loss, copies,
# concatenation, indexing); optimizer: Adam's step and the gradient clipping; data: making the batch's
# tensors; other: what no op accounts for (Python, autograd's engine, the profiler itself).
BUCKETS = ("products", "elementwise", "optimizer", "data", "other")
PRODUCTS = {
    "mm",
    "addmm",
    "bmm",
    "baddbmm",
    "addbmm",
    "matmul",
    "linear",
    "_linear_pointwise",
    "linear_dynamic",
}
RNN_KERNELS = ("mkldnn_rnn", "lstm", "gru", "rnn_tanh")  # op names starting so: whole fused layers or cells
# torch.compile's generated code runs as one event per call, named by its graph's hash: element-wise loops
# here (cpu/compiled.py); dynamo's own events around it (cache lookup, compiled region) are "other"
COMPILED_CALL, COMPILED_NAME = "## Call CompiledFxGraph", "torch.compile's loops"
DATA_SCOPE = "nmt::data"
PROFILE_STEPS = 5


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
    best_gflops: float  # the better of the two rates: the most fp32 products run at on this machine
    best_fraction: float  # steady useful GFLOP/s over best_gflops: the headline
    padding: float  # share of target positions that are padding
    tokens_per_step: float
    peak_rss_mb: float
    threads: int
    kernels: str  # "cpu" with the CPU swaps, "plain" without (NMT_PLAIN=1, another device, bf16/fp16)
    device: str
    precision: str
    costs: tuple[CostCentre, ...] = ()  # where a profiled update's time went, with profile_steps
    lstm_cell: str = ""  # how training's hand-stepped LSTM cell ran: cpu.lstm_cell()


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
    profile_steps: int = 0,
) -> TrainBench:
    """Train `steps` real updates on length-bucketed batches; time the ones after the first `skip`; then
    profile `profile_steps` more (costs), which leaves the timed figures as they were."""
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
    costs = profile_updates(model, optimizer, examples, batches[:profile_steps], train_cfg, engine)
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
        max(rate, onednn),
        useful_gflops / max(rate, onednn),
        padding_fraction(batches, examples),
        tokens / steps,
        peak_rss_mb(),
        torch.get_num_threads(),
        kernels,
        str(device),
        train_cfg.precision,
        costs,
        cpu.lstm_cell(),
    )


def profile_updates(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    examples: list[Example],
    batches: list[list[int]],
    cfg: TrainConfig,
    engine: Engine | None = None,
) -> tuple[CostCentre, ...]:
    """Updates on `batches` under torch.profiler -> their time in BUCKETS order; () for no batches."""
    if not batches:
        return ()
    os.environ.setdefault("KINETO_LOG_LEVEL", "99")  # else the profiler logs its start and stop on stderr
    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        began = time.perf_counter()
        for indices in batches:
            with record_function(DATA_SCOPE):
                batch = collate([examples[j] for j in indices])
            train_step(model, optimizer, batch, cfg, cfg.lr, engine)
        wall_us = (time.perf_counter() - began) * 1e6
    return cost_centres(prof.events(), wall_us, len(batches))


def _scope(event: Any) -> str | None:  # noqa: ANN401 - a profiler FunctionEvent
    """ "data" or "optimizer" where the event is, or runs inside, the batch's making or an optimizer call."""
    while event is not None:
        if event.name == DATA_SCOPE:
            return "data"
        if event.name.startswith("Optimizer."):  # torch.optim's own scopes: Optimizer.step#Adam.step
            return "optimizer"
        event = event.cpu_parent
    return None


def _bucket(name: str) -> str | None:
    """An op's bucket by its name; None for scopes and autograd's wrappers, whose own time is "other"."""
    if name == COMPILED_NAME:
        return "elementwise"
    space, _, op = name.partition("::")
    if not op or space == "autograd":
        return None
    if op.startswith(("_foreach_", "_fused_adam")):  # clipping's norms and scaling; Adam outside its scope
        return "optimizer"
    return "products" if op in PRODUCTS or op.lstrip("_").startswith(RNN_KERNELS) else "elementwise"


def cost_centres(events: list[Any], wall_us: float, updates: int) -> tuple[CostCentre, ...]:
    """Profiler events (times in µs) of `updates` updates that took wall_us -> one CostCentre per bucket.

    Each op counts its own time only (not its children's), so nothing is counted twice; a scope (the data
    or an optimizer call) counts whole, all the ops inside it included."""
    spent: dict[str, float] = dict.fromkeys(BUCKETS, 0.0)
    parts: dict[str, Counter[str]] = {b: Counter() for b in BUCKETS}
    for event in events:
        name = COMPILED_NAME if event.name.startswith(COMPILED_CALL) else event.name
        bucket = _scope(event) or _bucket(name)
        if bucket is not None:
            spent[bucket] += event.self_cpu_time_total
            parts[bucket][name] += event.self_cpu_time_total
    spent["other"] = max(wall_us - sum(spent.values()), 0.0)
    return tuple(
        CostCentre(
            name,
            spent[name] / updates / 1e3,
            spent[name] / wall_us,
            tuple((op, us / spent[name]) for op, us in parts[name].most_common(2) if spent[name] > 0),
        )
        for name in BUCKETS
    )


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that the clock covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)

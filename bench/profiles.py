"""Where training and decoding time and memory go: the measurements behind BENCHMARKS.md's profiles.

    python bench/profiles.py train [--updates 8]    torch.profiler over base-rnn updates, and GFLOP/s per
                                                   matmul shape
    python bench/profiles.py decode MODEL [--beam 1] torch.profiler over translating test_2016_flickr
    python bench/profiles.py decode-memory MODEL     load time; RSS after imports, loading, the first
                                                   batch, all lines
    python bench/profiles.py train-memory [--trim]   RSS per update (--trim: malloc_trim after each)
    python bench/profiles.py adam                    one Adam update of base-rnn's parameters, fused or not

Data: ${NMT_DATA:-../shared/data/multi30k}, subwords ${NMT_SPM:-runs/m30k/spm.model}. Threads from
OMP_NUM_THREADS. Self CPU time is what the tables sort by.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time
from pathlib import Path

import torch

DATA = Path(os.environ.get("NMT_DATA", "../shared/data/multi30k"))
SPM = os.environ.get("NMT_SPM", "runs/m30k/spm.model")


def rss(tag: str) -> None:
    """Current and peak resident set size (Linux /proc), on stderr."""
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    now, peak = (int(fields[key].split()[0]) // 1024 for key in ("VmRSS", "VmHWM"))
    print(f"{tag}: RSS {now} MB, peak {peak} MB", file=sys.stderr)


def base_rnn(updates: int):
    """A fresh base-rnn model, its optimizer and `updates` + 4 Multi30k batches."""
    from nmt_cli.config import PRESETS, ModelConfig, TrainConfig
    from nmt_cli.data import collate, load_parallel, token_batches
    from nmt_cli.model import build_model
    from nmt_cli.subword import Subword
    from nmt_cli.train import build_optimizer

    sub = Subword.from_file(SPM)
    examples, _ = load_parallel(DATA / "train.de", DATA / "train.en", sub, 100)
    model_fields, train_fields = PRESETS["base-rnn"]
    model_cfg = ModelConfig(vocab_size=sub.vocab_size, **model_fields)
    train_cfg = TrainConfig(**train_fields)
    torch.manual_seed(1)
    model = build_model(model_cfg).train()
    batches = token_batches(examples, train_cfg.batch_tokens, 1234, 0)[: updates + 4]
    batches = [collate([examples[j] for j in indices]) for indices in batches]
    return model, build_optimizer(model, train_cfg), train_cfg, batches


def matmul_rates(prof) -> None:
    """GFLOP/s of each mm / addmm / bmm shape, slowest-in-total first."""
    rows = []
    for e in prof.key_averages(group_by_input_shape=True):
        if e.key not in ("aten::mm", "aten::addmm", "aten::bmm") or not e.input_shapes:
            continue
        a, b = e.input_shapes[1:3] if e.key == "aten::addmm" else e.input_shapes[:2]
        flop = 2 * a[0] * a[1] * a[2] * b[2] if e.key == "aten::bmm" else 2 * a[0] * a[1] * b[1]
        seconds = e.self_cpu_time_total / 1e6
        rows.append((seconds, e.key, e.count, flop * e.count / seconds / 1e9, e.input_shapes))
    for seconds, key, count, rate, shapes in sorted(rows, reverse=True)[:20]:
        print(f"{seconds * 1e3:8.1f} ms {key:12s} n={count:4d} {rate:6.1f} GFLOP/s {shapes}")


def profile_train(args: argparse.Namespace) -> None:
    from torch.profiler import ProfilerActivity, profile

    from nmt_cli.train import train_step

    model, optimizer, cfg, batches = base_rnn(args.updates)
    for batch in batches[:4]:
        train_step(model, optimizer, batch, cfg, cfg.lr)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for batch in batches[4:]:
            train_step(model, optimizer, batch, cfg, cfg.lr)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
    matmul_rates(prof)


def test_ids(subword) -> list[list[int]]:
    return [subword.encode(line) for line in (DATA / "test_2016_flickr.de").read_text().splitlines()]


def profile_decode(args: argparse.Namespace) -> None:
    from torch.profiler import ProfilerActivity, profile

    from nmt_cli.checkpoint import load_model
    from nmt_cli.config import DecodeConfig
    from nmt_cli.decode import decode_ids

    loaded = load_model(args.model)
    ids, cfg = test_ids(loaded.subword), DecodeConfig(beam_size=args.beam)
    decode_ids(loaded.model, ids[:128], cfg, batch_size=64)
    began = time.perf_counter()
    decode_ids(loaded.model, ids, cfg, batch_size=64)
    print(f"{len(ids) / (time.perf_counter() - began):.1f} sentences/s without the profiler", file=sys.stderr)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        decode_ids(loaded.model, ids, cfg, batch_size=64)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def decode_memory(args: argparse.Namespace) -> None:
    from nmt_cli.checkpoint import load_model
    from nmt_cli.config import DecodeConfig
    from nmt_cli.decode import decode_ids

    rss("imports")
    began = time.perf_counter()
    loaded = load_model(args.model)
    rss(f"loaded in {time.perf_counter() - began:.2f} s")
    ids, cfg = test_ids(loaded.subword), DecodeConfig(beam_size=args.beam)
    decode_ids(loaded.model, ids[:64], cfg, batch_size=64)
    rss("first 64 lines")
    decode_ids(loaded.model, ids, cfg, batch_size=64)
    rss(f"all {len(ids)} lines")


def train_memory(args: argparse.Namespace) -> None:
    from nmt_cli.train import train_step

    rss("imports")
    model, optimizer, cfg, batches = base_rnn(args.updates)
    rss("data and model")
    trim = ctypes.CDLL("libc.so.6").malloc_trim if args.trim else None
    began, tokens = time.perf_counter(), 0
    for i, batch in enumerate(batches):
        if i == 4:
            began, tokens = time.perf_counter(), 0
        train_step(model, optimizer, batch, cfg, cfg.lr)
        tokens += batch.n_tokens
        if trim is not None:
            trim(0)
        rss(f"update {i} {tuple(batch.src.shape)} -> {tuple(batch.tgt_in.shape)}")
    print(f"{tokens / (time.perf_counter() - began):.0f} tok/s after the first 4 updates", file=sys.stderr)


def adam(args: argparse.Namespace) -> None:
    model, _, _, _ = base_rnn(0)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    for fused in (False, True, False, True):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)
        optimizer.step()
        began = time.perf_counter()
        for _ in range(args.updates):
            optimizer.step()
        print(f"fused={fused}: {(time.perf_counter() - began) / args.updates * 1e3:.1f} ms per update")


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("what", choices=["train", "decode", "decode-memory", "train-memory", "adam"])
    parser.add_argument("model", nargs="?", help="a model.nmt file (decode, decode-memory)")
    parser.add_argument("--updates", type=int, default=8)
    parser.add_argument("--beam", type=int, default=1)
    parser.add_argument("--trim", action="store_true")
    args = parser.parse_args()
    if args.what.startswith("decode") and not args.model:
        parser.error(f"{args.what} needs a MODEL")
    dict(
        train=profile_train,
        decode=profile_decode,
        train_memory=train_memory,
        decode_memory=decode_memory,
        adam=adam,
    )[args.what.replace("-", "_")](args)


if __name__ == "__main__":
    main()

"""Where training and decoding time and memory go: the measurements behind docs/performance.md.

    python bench/profiles.py train [--updates 8]    torch.profiler over base-rnn updates, and GFLOP/s per
                                                   matmul shape
    python bench/profiles.py decode MODEL [--beam 1] [--int8] [--shortlist K]
                                                   torch.profiler over translating test_2016_flickr
    python bench/profiles.py decode-memory MODEL [--beam 1] [--int8] [--shortlist K]
                                                   load time; RSS and malloc's bytes in use after imports,
                                                   loading, each 512 lines, as translate runs them
    python bench/profiles.py train-memory [--trim]   RSS per update (--trim: malloc_trim after each)
    python bench/profiles.py save-memory             what saving a base-rnn run's checkpoints (save_run) adds
                                                   to RSS, and how long it takes
    python bench/profiles.py adam                    one Adam update of base-rnn's parameters, fused or not
    python bench/profiles.py decode-steps MODEL [--beam 1] [--int8]
                                                   decoder steps, rows per step and step time over
                                                   test_2016_flickr, by rows per step
    python bench/profiles.py products              ms of an int8 shortlist cut (two ways) and of the products
                                                   decoding and training run often:
                                                   attention's matvec (column and row form), the output
                                                   layer at 8-256 rows, its weight gradient per loss chunk
    python bench/profiles.py int8-threads            us of the int8 (and fp32) products decoding runs, on one
                                                   thread and on two woken for each (OMP_WAIT_POLICY=PASSIVE)
    python bench/profiles.py gemm                    torch.mm (MKL) against nmt_cli.gemm (oneDNN) on base-rnn
                                                   products; the output layer plain and packed at decoding;
                                                   a decoder LSTM step as nn.LSTM and packed by hand
    python bench/profiles.py encoder-lstm            one encoder direction forward + backward: fused nn.LSTM
                                                   against cell.lstm_sequence, ms and MB kept for backward
    python bench/profiles.py int8-pack               fbgemm weights packed per channel or with scale 1 (the
                                                   scales applied to the output): ms to pack a 3,600-row
                                                   shortlist cut, and ms per product at 1-320 rows
    python bench/profiles.py tanh                    us of torch.tanh against tanh through sigmoid (what
                                                   decoding runs), and their largest errors
    python bench/profiles.py compiled-cell           us of training's LSTM cell, forward and backward, eager
                                                   and torch.compile'd, at base-rnn's rows (compiled.py)
    python bench/profiles.py int8-error MODEL        max relative error of the output layer at 64 rows:
                                                   our int8 against torch.ao's, both against fp32

Data: ${NMT_DATA:-../shared/data/multi30k}, subwords ${NMT_SPM:-runs/m30k/spm.model}. Threads from
OMP_NUM_THREADS. Self CPU time is what the tables sort by; ROWS sets how many rows they show (25).
"""

from __future__ import annotations

import argparse
import ctypes
import math
import os
import sys
import time
from functools import partial
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
    from nmt_cli.update import build_optimizer

    sub = Subword.from_file(SPM)
    examples, _ = load_parallel(DATA / "train.de", DATA / "train.en", sub, 100)
    model_fields, train_fields = PRESETS["base-rnn"]
    model_cfg = ModelConfig(vocab_size=sub.vocab_size, **model_fields)
    train_cfg = TrainConfig(**train_fields)
    torch.manual_seed(1)
    model = build_model(model_cfg).train()
    try:  # the CPU swaps, unless NMT_PLAIN=1 (revisions from before nmt_cli.cpu built them in)
        from nmt_cli.cpu import install
    except ImportError:
        pass
    else:
        install(model)
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

    from nmt_cli.update import train_step

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
    from nmt_cli.translate import for_decoding, shortlist_setting

    loaded = for_decoding(load_model(args.model), args.int8)
    ids, cfg = test_ids(loaded.subword), DecodeConfig(beam_size=args.beam, shortlist=args.shortlist)
    run = partial(decode_ids, loaded.model, cfg=cfg, batch_size=64, shortlist=shortlist_setting(loaded, cfg))
    run(ids[:128])
    began = time.perf_counter()
    run(ids)
    print(f"{len(ids) / (time.perf_counter() - began):.1f} sentences/s without the profiler", file=sys.stderr)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run(ids)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=int(os.environ.get("ROWS", 25))))


def decode_memory(args: argparse.Namespace) -> None:
    """RSS and malloc's bytes in use at each stage of translating test_2016_flickr as translate does it
    (one malloc arena, chunks of 512 lines, worker threads), after each chunk."""
    from nmt_cli.cpu.process import _one_malloc_arena

    _one_malloc_arena()  # before any thread starts, as translate
    from nmt_cli.cpu import gemm

    gemm.set_cache_capacity(gemm.DECODING_CACHE)  # before the first product, as translate
    from nmt_cli.checkpoint import load_model
    from nmt_cli.config import DecodeConfig
    from nmt_cli.translate import for_decoding, translate_lines

    def stage(tag: str) -> None:
        rss(f"{tag}; malloc in use {_malloc_live_mb():.0f} MB")

    stage("imports")
    began = time.perf_counter()
    loaded = for_decoding(load_model(args.model), args.int8)
    stage(f"loaded in {time.perf_counter() - began:.2f} s")
    lines = (DATA / "test_2016_flickr.de").read_text(encoding="utf-8").splitlines()
    chunks = [lines[i : i + 512] for i in range(0, len(lines), 512)]
    cfg = DecodeConfig(beam_size=args.beam, shortlist=args.shortlist)
    for n, _ in enumerate(translate_lines(iter(chunks), loaded, cfg), start=1):
        if n % 512 == 0 or n == len(lines):
            stage(f"{n} lines")


def train_memory(args: argparse.Namespace) -> None:
    from nmt_cli.update import train_step

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


def save_memory(args: argparse.Namespace) -> None:
    import tempfile

    from nmt_cli.run_files import Counters, save_run
    from nmt_cli.subword import Subword
    from nmt_cli.update import train_step

    model, optimizer, cfg, batches = base_rnn(0)
    for batch in batches[:2]:  # Adam's state exists from the first update on
        train_step(model, optimizer, batch, cfg, cfg.lr)
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak (VmHWM) starts again from here
    rss("before save_run")
    with tempfile.TemporaryDirectory() as out:
        began = time.perf_counter()
        save_run(Path(out), model, optimizer, Subword.from_file(SPM), Counters(), {}, True, cfg)
        print(f"save_run: {time.perf_counter() - began:.2f} s", file=sys.stderr)
    rss("after save_run")


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


def _ms(run, repeats: int = 100) -> float:
    for _ in range(5):
        run()
    began = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - began) / repeats * 1e3


def decode_steps(args: argparse.Namespace) -> None:
    from nmt_cli.checkpoint import load_model
    from nmt_cli.config import DecodeConfig
    from nmt_cli.decode import decode_ids
    from nmt_cli.translate import for_decoding

    # fp32 loads as every revision could, so older checkouts run this too (PYTHONPATH=... python -P)
    loaded = for_decoding(load_model(args.model), True) if args.int8 else load_model(args.model)
    ids, cfg = test_ids(loaded.subword), DecodeConfig(beam_size=args.beam)
    decode_ids(loaded.model, ids[:128], cfg, batch_size=64)
    model_class = type(loaded.model)  # Seq2Seq, or the CPU swaps' subclass
    steps, step = [], model_class.decode_step

    def timed(self, prev, state, enc):  # noqa: ANN001, ANN202 - as Seq2Seq.decode_step
        began = time.perf_counter()
        out = step(self, prev, state, enc)
        steps.append((prev.size(0), time.perf_counter() - began))
        return out

    model_class.decode_step = timed
    began = time.perf_counter()
    decode_ids(loaded.model, ids, cfg, batch_size=64)
    total = time.perf_counter() - began
    rows = sum(r for r, _ in steps)
    print(f"{len(ids) / total:.1f} sentences/s; {len(steps)} steps, {rows / len(steps):.1f} rows per step")
    for top in range(8, 64 * args.beam + 1, 8 * args.beam):
        these = [t for r, t in steps if top - 8 * args.beam < r <= top]
        if these:
            ms = 1e3 * sum(these) / len(these)
            print(f"  {top:4d} rows or fewer: {len(these):4d} steps, {ms:.2f} ms each")


def products(args: argparse.Namespace) -> None:
    int8 = torch.randint(-127, 127, (8000, 512), dtype=torch.int8).t()  # Int8Weight.values' layout
    rows = torch.randperm(8000)[:1500].sort().values
    columns = _ms(lambda: int8.index_select(1, rows))
    gathered = _ms(lambda: int8.t().index_select(0, rows).t())
    print(
        f"int8 output layer cut to 1,500 of 8,000 pieces: columns of (K, N) {columns:.3f} ms, rows of (N, K) "
        f"{gathered:.3f} ms"
    )
    print("attention matvec, (B, S, 512) keys by a (B, 512) query: column form, row form (ms)")
    for B, S in ((64, 25), (320, 25), (150, 30), (64, 60), (8, 25)):
        keys, query = torch.randn(B, S, 512), torch.randn(B, 512)
        column = _ms(lambda k=keys, q=query: torch.bmm(k, q.unsqueeze(2)))
        row = _ms(lambda k=keys, q=query: torch.bmm(q.unsqueeze(1), k.transpose(1, 2)))
        print(f"  B {B:3d} S {S}: {column:.3f} {row:.3f}")
    print("output layer, rows x 512 by 512 x 8,000 (addmm with the weight as nn.Linear keeps it)")
    weight, bias = torch.randn(8000, 512), torch.randn(8000)
    for rows in (8, 32, 64, 128, 256):
        x = torch.randn(rows, 512)
        ms = _ms(lambda x=x: torch.addmm(bias, x, weight.t()))
        print(f"  {rows:3d} rows: {ms:.3f} ms, {2 * rows * 512 * 8000 / ms / 1e6:.0f} GFLOP/s")
    grad, hidden, acc = torch.randn(512, 8000), torch.randn(512, 512), torch.zeros(8000, 512)
    new = _ms(lambda: acc.add_(torch.mm(grad.t(), hidden)), 30)
    inplace = _ms(lambda: acc.addmm_(grad.t(), hidden), 30)
    print(
        f"output weight gradient per 512-token chunk: new product + add {new:.2f} ms, addmm_ {inplace:.2f} ms"
    )


def int8_threads(args: argparse.Namespace) -> None:
    """The trade threads.PARALLEL_INT8_MACS makes: one thread, or two with the second woken per product."""
    torch.set_num_threads(1)

    def woken(product):  # noqa: ANN001, ANN202 - as threads.in_parallel does it
        def run():  # noqa: ANN202
            torch.set_num_threads(2)
            try:
                return product()
            finally:
                torch.set_num_threads(1)

        return run

    shapes = (
        (64, 1280, 2048),
        (64, 1024, 512),
        (64, 512, 1500),
        (64, 512, 8000),
        (64, 256, 1024),
        (128, 256, 2048),
    )
    from nmt_cli.cpu.int8 import KERNEL, Int8Weight, int8_matmul

    print(f"int8 kernel: {KERNEL}")
    for M, K, N in shapes:
        x, w = torch.randn(M, K), torch.randn(N, K)
        int8 = partial(int8_matmul, x, Int8Weight.of(w))  # with its per-row quantization, as decoding runs it
        fp32 = partial(torch.nn.functional.linear, x, w)
        us = [_ms(f, n) * 1e3 for f, n in ((int8, 300), (woken(int8), 300), (fp32, 100), (woken(fp32), 100))]
        print(
            f"{M:4d} x {K:4d} x {N:4d} ({M * K * N / 1e6:5.1f} M MAC), one thread / two: "
            f"int8 {us[0]:6.0f} / {us[1]:6.0f} us, fp32 {us[2]:6.0f} / {us[3]:6.0f} us"
        )


def int8_pack(args: argparse.Namespace) -> None:
    """fbgemm weights packed with their per-channel scales, or with scale 1 and the scales applied to the
    output (what quantize does): the cost of packing a shortlist cut, and of products with each."""
    import warnings

    from nmt_cli.cpu.int8 import _TINY, _fbgemm_pack

    torch.set_num_threads(1)
    torch.backends.quantized.engine = "fbgemm"

    def per_channel(values, scales):  # noqa: ANN001, ANN202 - how quantize packed before
        zero_points = torch.zeros(len(scales), dtype=torch.long)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            weight = torch._make_per_channel_quantized_tensor(values, scales.double(), zero_points, 0)
            return torch.ops.quantized.linear_prepack(weight, None)

    values = torch.randint(-127, 128, (3600, 512), dtype=torch.int8)
    scales = torch.rand(3600) * 0.01 + _TINY
    channel, unit = _ms(lambda: per_channel(values, scales), 30), _ms(lambda: _fbgemm_pack(values), 30)
    print(f"pack 3,600 x 512: per channel {channel:.2f} ms, scale 1 {unit:.2f} ms")
    for N, K in ((8000, 512), (2048, 1024), (3600, 512)):
        values = torch.randint(-127, 128, (N, K), dtype=torch.int8)
        scales, bias = torch.rand(N) * 0.01 + _TINY, torch.randn(N)
        packs = per_channel(values, scales), _fbgemm_pack(values)
        for M in (1, 8, 64, 320):
            channel, unit = _scaled_products(M, K, packs, scales, bias)
            print(f"  {M:3d} x {K:4d} x {N:4d}: per channel {channel:.3f} ms, scale 1 {unit:.3f} ms")


def _scaled_products(M: int, K: int, packs: tuple, scales: torch.Tensor, bias: torch.Tensor) -> tuple:
    """ms of an M-row fbgemm product with the weight packed per channel, and packed with scale 1."""
    rows, row_scales = torch.rand(M + 2, K) * 2 - 1, torch.rand(M, 1)

    def per_channel():  # noqa: ANN202
        return torch.ops.quantized.linear_dynamic(rows, packs[0], True)[:M].mul_(row_scales).add_(bias)

    def unit():  # noqa: ANN202
        out = torch.ops.quantized.linear_dynamic(rows, packs[1], True)[:M].mul_(row_scales)
        return torch.addcmul(bias, out, scales)

    return _ms(per_channel, 50), _ms(unit, 50)


def tanh_rates(args: argparse.Namespace) -> None:
    """us per call of torch.tanh and of nmt_cli.activations.tanh (through sigmoid) at decoding's shapes,
    torch.sigmoid for scale, and the largest error of each against float64 over [-20, 20]."""
    from nmt_cli.cpu.layers import tanh

    with torch.inference_mode():
        for rows, cols in ((64, 512), (8, 512), (320, 512)):
            x = torch.randn(rows, cols)
            print(
                f"{rows} x {cols}: torch.tanh {1e3 * _ms(lambda x=x: torch.tanh(x), 2000):.1f} us, "
                f"through sigmoid {1e3 * _ms(lambda x=x: tanh(x), 2000):.1f}, "
                f"sigmoid {1e3 * _ms(lambda x=x: torch.sigmoid(x), 2000):.1f}"
            )
        x = torch.linspace(-20, 20, 2_000_001)
        exact = torch.tanh(x.double())
        for name, got in (("torch.tanh", torch.tanh(x)), ("through sigmoid", tanh(x))):
            print(f"{name}: max error {(got.double() - exact).abs().max().item():.2e}")


def compiled_cell(args: argparse.Namespace) -> None:
    """us per call of the LSTM cell's pointwise forward and backward, eager and compiled (one variant, as
    training calls it), at the rows of base-rnn's batches."""
    from nmt_cli.cpu import compiled

    cells = {
        "forward": compiled.Compiled("forward", compiled._lstm_pointwise, compiled.lstm_pointwise_eager),
        "backward": compiled.Compiled(
            "backward", compiled._lstm_pointwise_backward, compiled.lstm_pointwise_backward_eager
        ),
    }
    H = 512
    for rows in (120, 187, 333):
        gates, c, grad_h, grad_c = torch.randn(rows, 4 * H), torch.randn(rows, H), *torch.randn(2, rows, H)
        h, c_new, act = compiled.lstm_pointwise_eager(gates, c)
        inputs = {"forward": (gates, c), "backward": (grad_h, grad_c, act, c, c_new)}
        for name, cell in cells.items():
            args_ = inputs[name]
            cell(*args_)  # compiles
            eager = 1e3 * _ms(lambda cell=cell, args_=args_: cell.eager(*args_), 500)
            fast = 1e3 * _ms(lambda cell=cell, args_=args_: cell(*args_), 500)
            ran = cell.call.__name__
            print(f"{rows} x {H} {name:8s}: eager {eager:6.1f} us, compiled {fast:6.1f} us ({ran})")


def int8_error(args: argparse.Namespace) -> None:
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic  # noqa: TID251

    from nmt_cli.checkpoint import load_model
    from nmt_cli.cpu.int8 import Int8Linear

    layer = load_model(args.model).model.generator
    x = torch.tanh(torch.randn(64, layer.in_features, generator=torch.Generator().manual_seed(0)))
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exact = layer(x)
        ours = Int8Linear.of(layer)(x)
        theirs = quantize_dynamic(torch.nn.Sequential(layer), {"0": per_channel_dynamic_qconfig})(x)
    for name, approx in (("ours", ours), ("torch.ao", theirs)):
        print(f"{name}: max relative error {float((approx - exact).abs().max() / exact.abs().max()):.4f}")


def gemm_rates(args: argparse.Namespace) -> None:
    """torch.mm (MKL) against nmt_cli.gemm (oneDNN) on base-rnn's products, and one decoder LSTM step."""
    from nmt_cli.cpu import gemm
    from nmt_cli.cpu.cell import gates_to_state

    print(f"products through {gemm.backend()}; ms, GFLOP/s, speed-up")
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    out_w, grad_z, h = torch.randn(8000, 512), torch.randn(512, 8000), torch.randn(512, 512)
    step_w = torch.randn(2048, 1280)
    cases = [
        ("2048 x 2048 x 2048", a, b),
        ("output layer forward, 512 x 512 x 8000", h, out_w.t()),
        ("output layer, gradient for h", grad_z, out_w),
        ("output layer, weight gradient (transposed)", h.t(), grad_z),
        (
            "deferred LSTM weight gradient, 2048 x 2700 x 1024",
            torch.randn(2700, 2048).t(),
            torch.randn(2700, 1024),
        ),
        *((f"decoder step, {rows} x 1280 x 2048", torch.randn(rows, 1280), step_w.t()) for rows in (64, 180)),
    ]
    for name, left, right in cases:
        flop = 2 * left.size(0) * left.size(1) * right.size(1)
        mkl = _ms(lambda left=left, right=right: left @ right, 20)
        onednn = _ms(lambda left=left, right=right: gemm.mm(left, right), 20)
        print(
            f"  {name}: {mkl:.3f} / {onednn:.3f} ms, {flop / mkl / 1e6:.0f} / {flop / onednn / 1e6:.0f}, "
            f"{mkl / onednn:.2f}x"
        )
    bias = torch.randn(8000)
    for rows in (64, 8):
        x = torch.randn(rows, 512)
        packed = gemm.pack(out_w)
        plain = _ms(lambda x=x: gemm.linear(x, out_w, bias), 300)
        fast = (
            _ms(lambda x=x, p=packed: gemm.linear_packed(x, p, bias), 300) if packed is not None else math.nan
        )
        mkl = _ms(lambda x=x: torch.addmm(bias, x, out_w.t()), 300)
        print(
            f"  output layer at decoding, {rows} rows: torch {mkl:.3f}, plain {plain:.3f}, packed {fast:.3f}"
        )
    rnn = torch.nn.LSTM(768, 512, batch_first=True).eval()
    with torch.inference_mode():
        x, h0, c0 = torch.randn(64, 768), torch.randn(1, 64, 512), torch.randn(1, 64, 512)
        weight = gemm.pack(torch.cat([rnn.weight_ih_l0, rnn.weight_hh_l0], 1))
        bias = rnn.bias_ih_l0 + rnn.bias_hh_l0
        module = _ms(lambda: rnn(x.unsqueeze(1), (h0, c0)), 300)
        if weight is not None:
            by_hand = _ms(
                lambda: gates_to_state(gemm.linear_packed(torch.cat([x, h0[0]], 1), weight, bias), c0[0]), 300
            )
            print(
                f"  decoder LSTM step, 64 rows: nn.LSTM (oneDNN) {module:.3f}, packed by hand {by_hand:.3f}"
            )


def _malloc_live_mb() -> float:
    """Bytes glibc's malloc has handed out and not had back (mallinfo2), in MB."""

    class MallInfo2(ctypes.Structure):
        counts = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks")
        _fields_ = [(name, ctypes.c_size_t) for name in (*counts, "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    return (info.uordblks + info.hblkhd) / 2**20


def encoder_lstm(args: argparse.Namespace) -> None:
    """One encoder direction of base-rnn (256 -> 256) over a batch, forward and backward: the fused
    nn.LSTM against cell.lstm_sequence, ms per pass and MB its forward keeps for backward."""
    from nmt_cli.cpu.cell import lstm_sequence

    torch.manual_seed(0)
    rnn = torch.nn.LSTM(256, 256, batch_first=True)
    for rows, length in ((225, 13), (100, 30)):
        x = torch.randn(rows, length, 256, requires_grad=True)
        runs = (("nn.LSTM", lambda x=x: rnn(x)[0]), ("lstm_sequence", lambda x=x: lstm_sequence(rnn, x)[0]))
        for name, run in runs:
            for _ in range(2):
                run().sum().backward()
            before = _malloc_live_mb()
            out = run()
            kept = _malloc_live_mb() - before
            out.sum().backward()
            del out
            ms = _ms(lambda: run().sum().backward(), 10)  # noqa: B023 - run is called at once
            print(f"{rows} x {length}: {name:14s} {ms:6.1f} ms forward + backward, keeps {kept:5.1f} MB")


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    choices = [
        "train",
        "decode",
        "decode-memory",
        "train-memory",
        "adam",
        "decode-steps",
        "products",
        "int8-threads",
        "save-memory",
        "gemm",
        "encoder-lstm",
        "tanh",
        "compiled-cell",
    ]
    parser.add_argument("what", choices=[*choices, "int8-pack", "int8-error"])
    parser.add_argument("model", nargs="?", help="a model.nmt file (decode..., int8-error)")
    parser.add_argument("--int8", action="store_true")
    parser.add_argument("--updates", type=int, default=8)
    parser.add_argument("--beam", type=int, default=1)
    parser.add_argument("--shortlist", type=int, default=0, help="decode: shortlist entries per piece")
    parser.add_argument("--trim", action="store_true")
    args = parser.parse_args()
    if (args.what.startswith("decode") or args.what == "int8-error") and not args.model:
        parser.error(f"{args.what} needs a MODEL")
    dict(
        train=profile_train,
        decode=profile_decode,
        train_memory=train_memory,
        decode_memory=decode_memory,
        adam=adam,
        save_memory=save_memory,
        decode_steps=decode_steps,
        products=products,
        int8_threads=int8_threads,
        int8_pack=int8_pack,
        int8_error=int8_error,
        gemm=gemm_rates,
        encoder_lstm=encoder_lstm,
        tanh=tanh_rates,
        compiled_cell=compiled_cell,
    )[args.what.replace("-", "_")](args)


if __name__ == "__main__":
    main()

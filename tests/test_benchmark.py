"""The training benchmark: the analytic FLOP count and a short real run through the command line."""

import json

import pytest
from typer.testing import CliRunner

from nmt_cli.benchmark import forward_macs_per_token
from nmt_cli.cli import app
from nmt_cli.config import ModelConfig


def test_base_rnn_flops_match_the_protocol_table():
    # BENCHMARKS-PEERS.md §2: decoder cell 2.62 M + attention 0.80 M + generator 4.10 M + encoder 1.02 M
    # (1.05 M per source token x 0.97) = 8.5 M MAC forward; x 2 FLOP x 3 (forward + backward) = 51.2 MFLOP
    cfg = ModelConfig(vocab_size=8000, input_feeding=True, attention="general")
    macs = forward_macs_per_token(cfg, src_per_tgt=0.97)
    assert macs == pytest.approx(8.53e6, rel=0.01)
    assert 6 * macs / 1e6 == pytest.approx(51.2, rel=0.01)
    no_feed = forward_macs_per_token(ModelConfig(vocab_size=8000, input_feeding=False), 0.97)
    assert macs - no_feed == pytest.approx(4 * 512 * 512)  # input feeding: 512 more inputs per gate


def test_bench_train_reports_a_fraction_of_the_matmul_rate(corpus):
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "train",
            "--preset",
            "tiny",
            "--src",
            corpus.train_src,
            "--tgt",
            corpus.train_tgt,
            "--steps",
            "4",
            "--skip",
            "1",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["steps"] == 4 and report["measured_steps"] == 3
    assert report["tok_s"] > 0 and report["matmul_gflops"] > 0 and 0 < report["fraction"] < 2
    assert report["fraction"] == pytest.approx(
        report["tok_s"] * report["mflop_per_token"] / 1e3 / report["matmul_gflops"], rel=1e-6
    )
    assert 0 <= report["padding"] < 0.2 and report["peak_rss_mb"] > 100
    # the headline: against the better of the two measured rates, so never above either fraction
    assert report["best_gflops"] == max(report["matmul_gflops"], report["onednn_gflops"])
    assert report["best_fraction"] == pytest.approx(
        report["tok_s"] * report["mflop_per_token"] / 1e3 / report["best_gflops"], rel=1e-6
    )
    assert report["best_fraction"] <= min(report["fraction"], report["onednn_fraction"] or 1e9) + 1e-12


class FakeEvent:
    """What cost_centres reads of a profiler event: name, own time (µs) and parent."""

    def __init__(self, name, self_us, parent=None):
        self.name, self.self_cpu_time_total, self.cpu_parent = name, self_us, parent


def test_cost_centres_count_each_ops_own_time_once_in_its_bucket():
    from nmt_cli.benchmark import BUCKETS, DATA_SCOPE, cost_centres

    data = FakeEvent(DATA_SCOPE, 100)  # a scope counts whole: 100 + 10 = 110 data
    step = FakeEvent("Optimizer.step#Adam.step", 20)  # 20 + 80, and clipping's 30: 130 optimizer
    backward = FakeEvent("autograd::engine::evaluate_function: MmBackward0", 50)  # a wrapper: other
    linear = FakeEvent("aten::linear", 5)
    events = [
        data,
        FakeEvent("aten::empty", 10, data),
        step,
        FakeEvent("aten::_fused_adam_", 80, step),
        FakeEvent("aten::_foreach_norm", 30),
        backward,
        FakeEvent("aten::mm", 200, backward),  # products: 200 + 5 + 300 + 100 = 605
        linear,
        FakeEvent("aten::addmm", 300, linear),
        FakeEvent("aten::mkldnn_rnn_layer", 100),
        FakeEvent("aten::tanh", 40),  # elementwise 40 + 25
        FakeEvent("TorchDynamo Cache Lookup", 4),  # dynamo's own: other
        FakeEvent("## Call CompiledFxGraph f5k2hash ##", 25),  # a compiled loop
    ]
    costs = cost_centres(events, wall_us=1000, updates=2)
    assert [c.name for c in costs] == list(BUCKETS)
    spent = {c.name: c.ms_per_update * 2 * 1000 for c in costs}  # back to µs over both updates
    expected = {"products": 605, "elementwise": 65, "optimizer": 130, "data": 110, "other": 90}
    assert spent == pytest.approx(expected)
    assert sum(c.share for c in costs) == pytest.approx(1.0)
    assert costs[0].largest == (
        ("aten::addmm", pytest.approx(300 / 605)),
        ("aten::mm", pytest.approx(200 / 605)),
    )
    assert costs[1].largest == (
        ("aten::tanh", pytest.approx(40 / 65)),
        ("torch.compile's loops", pytest.approx(25 / 65)),
    )


def test_bench_train_profile_prints_where_an_updates_time_goes(corpus):
    args = ["bench", "train", "--preset", "tiny", "--src", corpus.train_src, "--tgt", corpus.train_tgt]
    result = CliRunner().invoke(app, [*args, "--steps", "2", "--skip", "1", "--profile"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("of the best matmul rate\t")  # the headline comes first
    table = result.stdout.split("where an update's time goes", 1)[1].splitlines()
    rows = {line.split()[0]: line.split() for line in table[2:] if line.strip()}
    assert list(rows) == ["products", "elementwise", "optimizer", "data", "other"]
    shares = [float(row[2]) for row in rows.values()]  # "12.3 %" -> 12.3
    assert sum(shares) == pytest.approx(100, abs=0.5) and all(s >= 0 for s in shares)
    assert rows["products"][1] != "0.0" and "aten::" in " ".join(rows["products"][4:])
    assert "aten::_fused_adam_" in " ".join(rows["optimizer"])

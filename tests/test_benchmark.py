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

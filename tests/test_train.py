"""Training: losses fall, resume equals an uninterrupted run, budgets and limits stop it cleanly."""

import json
from pathlib import Path

import pytest
import torch

from nmt_cli.checkpoint import load_model
from nmt_cli.config import TrainConfig
from nmt_cli.data import collate, load_parallel
from nmt_cli.errors import ConfigError
from nmt_cli.loss import Validation, backward_in_chunks, token_loss
from nmt_cli.model import build_model
from nmt_cli.train import Run, fit
from tests.conftest import head, tiny_model_config

FAST = dict(lr=5e-3, batch_tokens=400, log_every=2, valid_every=4, valid_max_sentences=8)


def run_for(tmp_path, corpus, subword, name, model_cfg=None, **train):
    cfg = TrainConfig(**{**FAST, **train})
    model_cfg = model_cfg or tiny_model_config(subword.vocab_size)
    return Run(corpus, subword, model_cfg, cfg, tmp_path / name)


def weights(path):
    return load_model(path).model.state_dict()


def test_loss_falls_and_log_is_json_lines(tmp_path, corpus, subword):
    run = run_for(tmp_path, corpus, subword, "a", max_steps=12)
    summary = fit(run, quiet=True)
    assert summary.steps == 12 and summary.stopped == "max-steps"
    records = [json.loads(line) for line in (run.out_dir / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    valid = [r for r in records if r["kind"] == "valid"]
    assert [r["step"] for r in train] == [2, 4, 6, 8, 10, 12]
    assert train[-1]["loss"] < train[0]["loss"]
    assert [r["step"] for r in valid] == [4, 8, 12] and all("dev_bleu" in r for r in valid)
    assert {p.name for p in run.out_dir.iterdir()} >= {
        "model.nmt",
        "last.nmt",
        "trainer_state.pt",
        "log.jsonl",
    }


def test_resumed_run_equals_uninterrupted_run(tmp_path, corpus, subword):
    straight = run_for(
        tmp_path,
        corpus,
        subword,
        "straight",
        max_steps=8,
        schedule="inverse-sqrt",
        warmup_steps=3,
        label_smoothing=0.1,
        model_cfg=tiny_model_config(subword.vocab_size, dropout=0.3),
    )
    fit(straight, quiet=True)
    halves = straight._replace(
        out_dir=tmp_path / "halves",
        train_cfg=straight.train_cfg.__class__(**{**straight.train_cfg.__dict__, "max_steps": 4}),
    )
    fit(halves, quiet=True)
    fit(halves._replace(train_cfg=straight.train_cfg), resume=True, quiet=True)
    a, b = weights(straight.out_dir / "last.nmt"), weights(halves.out_dir / "last.nmt")
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_resume_refuses_a_different_model(tmp_path, corpus, subword):
    run = run_for(tmp_path, corpus, subword, "r", max_steps=4)
    fit(run, quiet=True)
    other = run._replace(model_cfg=tiny_model_config(subword.vocab_size, attention="bahdanau"))
    with pytest.raises(ConfigError, match="model config differs in attention"):
        fit(other, resume=True, quiet=True)


def test_epoch_limit_and_no_dev_set(tmp_path, corpus, subword):
    run = run_for(tmp_path, corpus, subword, "e", epochs=0.2, valid_every=1000)
    run = run._replace(data=run.data.__class__(corpus.train_src, corpus.train_tgt))
    summary = fit(run, quiet=True)
    # the limit counts batches and the summary tokens, so they differ by a batch's worth
    assert summary.stopped == "epochs" and summary.epochs == pytest.approx(0.2, abs=0.05)
    assert summary.best_bleu is None and (run.out_dir / "model.nmt").exists()


def test_time_budget_stops_in_time(tmp_path, corpus, subword):
    import time

    start = time.time()
    summary = fit(run_for(tmp_path, corpus, subword, "t", time_budget=4.0), start_time=start, quiet=True)
    assert summary.stopped == "time-budget"
    assert time.time() - start < 4.0 + 2.0  # the final validation and save fit inside the budget, roughly


def test_a_limit_is_required(tmp_path, corpus, subword):
    with pytest.raises(ConfigError, match="give a limit"):
        fit(run_for(tmp_path, corpus, subword, "n"), quiet=True)


@pytest.mark.parametrize("attention", ["bahdanau", "general"])
@pytest.mark.parametrize("input_feeding", [True, False])
def test_loss_equals_per_token_cross_entropy(corpus, subword, attention, input_feeding):
    # the output layer only on real tokens gives the same loss as the full (B, T, V) computation
    cfg = tiny_model_config(subword.vocab_size, attention=attention, input_feeding=input_feeding)
    model = build_model(cfg).eval()
    examples, _ = load_parallel(corpus.dev_src, corpus.dev_tgt, subword, 100)
    batch = collate(examples[:5])
    full = model.log_probs(model.teacher_force(batch.src, batch.src_lengths, batch.tgt_in).hidden)
    expected = torch.nn.functional.nll_loss(
        full.transpose(1, 2), batch.tgt_out, ignore_index=0, reduction="sum"
    )
    assert torch.allclose(token_loss(model, batch), expected, rtol=1e-5)


def test_label_smoothing_mixes_in_the_uniform_distribution(corpus, subword):
    # smoothed loss = (1 - eps) * NLL + eps * mean over the vocabulary of -log p, summed over real tokens
    model = build_model(tiny_model_config(subword.vocab_size)).eval()
    examples, _ = load_parallel(corpus.dev_src, corpus.dev_tgt, subword, 100)
    batch = collate(examples[:5])
    log_p = model.log_probs(model.teacher_force(batch.src, batch.src_lengths, batch.tgt_in).hidden)
    real = batch.tgt_out != 0
    nll = -log_p[real].gather(1, batch.tgt_out[real].unsqueeze(1)).sum()
    uniform = -log_p[real].mean(dim=1).sum()
    smoothed = token_loss(model, batch, label_smoothing=0.1)
    assert torch.allclose(smoothed, 0.9 * nll + 0.1 * uniform, rtol=1e-5)


def test_model_config_vocab_must_match(tmp_path, corpus, subword):
    # one more id than the subword model has: refused before anything is written
    model_cfg = tiny_model_config(subword.vocab_size + 1)
    run = run_for(tmp_path, corpus, subword, "v", max_steps=1, model_cfg=model_cfg)
    expected = (
        f"model vocab_size {subword.vocab_size + 1} does not match the subword model's {subword.vocab_size}"
    )
    with pytest.raises(ConfigError, match=expected):
        fit(run, quiet=True)
    assert not run.out_dir.exists()


def test_dev_bleu_is_scored_against_the_raw_references(tmp_path, corpus, subword, monkeypatch):
    # characters the subword model never saw: decode(encode(line)) would turn them into the unknown piece
    # on both sides, and count them as matches
    import nmt_cli.train as train_module

    lines = Path(corpus.dev_tgt).read_text(encoding="utf-8").splitlines()[:8]
    lines[0] += " \u2603\u03a9"  # a snowman and an omega
    dev_src, dev_tgt = head(Path(corpus.dev_src), tmp_path / "dev.en", 8), tmp_path / "dev.de"
    dev_tgt.write_text("\n".join(lines) + "\n", encoding="utf-8")
    seen = []

    def scripted(model, dev, sub, refs):
        seen.append(refs)
        return Validation(1.0, 2.7, 1.0, "sig")

    monkeypatch.setattr(train_module, "validate", scripted)
    run = run_for(tmp_path, corpus, subword, "d", max_steps=4)
    data = run.data.__class__(corpus.train_src, corpus.train_tgt, str(dev_src), str(dev_tgt))
    fit(run._replace(data=data), quiet=True)
    assert seen == [lines]


@pytest.mark.parametrize("smoothing, tied", [(0.1, False), (0.0, False), (0.1, True)])
def test_chunked_backward_equals_whole_loss(corpus, subword, smoothing, tied):
    # the chunks' output layer backward is written by hand; autograd over the whole loss is the reference
    cfg = tiny_model_config(subword.vocab_size, emb_size=128, tie_embeddings=tied)
    model = build_model(cfg)
    examples, _ = load_parallel(corpus.dev_src, corpus.dev_tgt, subword, 100)
    batch = collate(examples[:8])
    (token_loss(model, batch, smoothing) / batch.n_tokens).backward()
    whole = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    total = backward_in_chunks(model, batch, smoothing, chunk=7)  # several uneven chunks
    assert total == pytest.approx(token_loss(model, batch, smoothing).item(), rel=1e-5)
    for name, p in model.named_parameters():
        assert torch.allclose(whole[name], p.grad, rtol=1e-4, atol=1e-7), name


def test_patience_stops_and_plateau_lowers_the_rate(tmp_path, corpus, subword, monkeypatch):
    # dev BLEU scripted: 5, then 4, 4, 4 -> after 2 validations without a better score, patience 2 stops;
    # with the plateau schedule (patience 1, factor 0.5) each bad validation halves the rate
    import nmt_cli.train as train_module

    scores = iter([5.0, 4.0, 4.0, 4.0, 4.0])
    monkeypatch.setattr(train_module, "validate", lambda *a, **k: Validation(1.0, 2.7, next(scores), "sig"))
    run = run_for(
        tmp_path,
        corpus,
        subword,
        "p",
        max_steps=40,
        valid_every=2,
        patience=2,
        schedule="plateau",
        plateau_patience=1,
        plateau_factor=0.5,
    )
    summary = fit(run, quiet=True)
    assert summary.stopped == "patience" and summary.steps == 6 and summary.best_step == 2
    lrs = [
        r["lr"]
        for r in map(json.loads, (run.out_dir / "log.jsonl").read_text().splitlines())
        if r["kind"] == "train"
    ]
    assert lrs == [5e-3, 5e-3, 2.5e-3]  # logged at steps 2, 4, 6: halved after the bad validation at 4


def test_each_report_shows_the_mean_loss_over_its_window(tmp_path, corpus, subword, monkeypatch):
    # batch losses scripted 1, 3 | 2, 6 with log_every 2: each report is the token-weighted mean of its
    # two batches, e.g. (1*n1 + 3*n2) / (n1 + n2), never the last batch's 3 or 6
    import nmt_cli.train as train_module

    losses, tokens = iter([1.0, 3.0, 2.0, 6.0]), []

    def scripted_step(model, optimizer, batch, cfg, lr, engine=None, n_tokens=None, n_sents=None):
        tokens.append(batch.n_tokens)
        return next(losses)

    monkeypatch.setattr(train_module, "train_step", scripted_step)
    run = run_for(tmp_path, corpus, subword, "m", max_steps=4, valid_every=100)
    fit(run, quiet=True)
    train = [
        r
        for r in map(json.loads, (run.out_dir / "log.jsonl").read_text().splitlines())
        if r["kind"] == "train"
    ]
    n1, n2, n3, n4 = tokens
    assert [r["step"] for r in train] == [2, 4]
    assert train[0]["loss"] == pytest.approx((1 * n1 + 3 * n2) / (n1 + n2), abs=1e-4)
    assert train[1]["loss"] == pytest.approx((2 * n3 + 6 * n4) / (n3 + n4), abs=1e-4)


@pytest.mark.parametrize("max_len", [10_000, 12])
def test_kept_pairs_line_names_skips_only_when_there_are_some(
    tmp_path, corpus, subword, caplog, monkeypatch, max_len
):
    import logging

    caplog.set_level(logging.INFO, logger="nmt_cli.train")
    monkeypatch.setattr(logging.getLogger("nmt_cli"), "propagate", True)  # CLI tests route it to rich only
    fit(run_for(tmp_path, corpus, subword, "k", max_steps=1, valid_every=100, max_len=max_len), quiet=True)
    # a set: the record can reach caplog's handler twice when an earlier test left one on "nmt_cli"
    [line] = {r.getMessage() for r in caplog.records if r.getMessage().startswith("training pairs:")}
    if max_len == 10_000:
        assert line.endswith("kept of 1500") and "(" not in line, line  # nothing skipped: no "()" either
    else:
        assert line.endswith(" too long)") and "(skipped: " in line and "empty" not in line, line

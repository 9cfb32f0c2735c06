"""Every cell (rnn, lstm, gru) and the no-attention model through the command line: train a few steps,
translate greedy and beam, score, save and load; the attention commands refuse a model without attention."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from nmt_cli.checkpoint import load_model
from nmt_cli.cli import app

runner = CliRunner()


def first_lines(path: str, n: int) -> str:
    return "".join(line + "\n" for line in Path(path).read_text(encoding="utf-8").split("\n")[:n])


def invoke(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


@pytest.fixture(
    scope="module", params=[("rnn", "none"), ("gru", "bahdanau"), ("lstm", "none"), ("lstm", "general")]
)
def variant(request, corpus, subword, tmp_path_factory):
    cell, attention = request.param
    out = tmp_path_factory.mktemp(f"{cell}-{attention}")
    subword.save(out / "spm.model")
    result = invoke(
        "train", "--preset", "tiny", "--src", corpus.train_src, "--tgt", corpus.train_tgt,
        "--dev-src", corpus.dev_src, "--dev-tgt", corpus.dev_tgt, "--spm", out / "spm.model",
        "--cell", cell, "--attention", attention, "--input-feeding", "--max-steps", 6,
        "--valid-every", 3, "--threads", 1, "-q", "-o", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    return cell, attention, out / "model.nmt"


def test_the_checkpoint_records_the_cells_and_attention_and_loads_the_same_weights(variant):
    cell, attention, path = variant
    loaded = load_model(path)
    assert (loaded.config.encoder_cell, loaded.config.decoder_cell, loaded.config.attention) == (
        cell,
        cell,
        attention,
    )
    again = load_model(path)
    for (name, a), b in zip(
        loaded.model.state_dict().items(), again.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    info = invoke("info", path)
    assert f"{cell.upper()} decoder" in info.stdout and f"{attention} attention" in info.stdout


@pytest.mark.parametrize("beam", [1, 3])
def test_translate_greedy_and_beam_gives_a_line_per_line_and_scores(variant, corpus, tmp_path, beam):
    _, _, path = variant
    src = first_lines(corpus.dev_src, 5) + "\n"
    result = invoke("translate", "-m", path, "-b", beam, "-q", input=src)
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.split("\n")) == 7 and result.stdout.split("\n")[5] == ""  # 6 lines, 6th empty
    hyp = tmp_path / "hyp"
    hyp.write_text(result.stdout)
    ref = tmp_path / "ref"
    ref.write_text(first_lines(corpus.dev_tgt, 5) + "\n")
    scored = invoke("evaluate", "-r", ref, hyp, "--metrics", "bleu", "--score-only")
    assert scored.exit_code == 0, scored.stderr
    assert float(scored.stdout) >= 0.0
    forced = invoke("score", "-m", path, "--src", corpus.dev_src, "--tgt", corpus.dev_tgt)
    assert forced.exit_code == 0, forced.stderr


def test_attention_commands_say_the_model_has_none(variant, corpus):
    _, attention, path = variant
    drawn = invoke("attention", "-m", path, "the dog")
    aligned = invoke("align", "-m", path, "--src", corpus.dev_src)
    jsonl = invoke("translate", "-m", path, "--format", "jsonl", "--with-attention", "-q", input="a dog\n")
    if attention == "none":
        for result in (drawn, aligned, jsonl):
            assert result.exit_code == 1
            assert "this model has no attention" in result.stderr and result.stderr.count("\n") == 1
    else:
        assert drawn.exit_code == 0 and aligned.exit_code == 0, drawn.stderr + aligned.stderr
        assert len(json.loads(jsonl.stdout)["attention"]) > 0


def test_int8_decoding_and_checkpoint_averaging_work_on_every_variant(variant, tmp_path):
    cell, attention, path = variant
    result = invoke("translate", "-m", path, "--int8", "-q", input="a dog runs .\n\n")
    if cell == "lstm" and attention != "none":
        assert result.exit_code == 0, result.stderr
        assert result.stdout.count("\n") == 2 and result.stdout.split("\n")[0]
    else:  # the int8 swaps step an LSTM decoder with attention only
        assert result.exit_code == 1 and "--int8 covers models with an LSTM decoder" in result.stderr
    averaged = invoke("average", path, path, "-o", tmp_path / "avg.nmt")
    assert averaged.exit_code == 0, averaged.stderr
    assert load_model(tmp_path / "avg.nmt").config == load_model(path).config

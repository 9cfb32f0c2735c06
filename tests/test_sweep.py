"""nmt sweep: the grid parser, cells in grid order, resume cell by cell, the summary and its outputs."""

import json

import pytest
from typer.testing import CliRunner

from nmt_cli import sweep as sw
from nmt_cli.cli import app
from nmt_cli.config import DataConfig, preset
from nmt_cli.errors import ConfigError
from tests.conftest import DATA, head

runner = CliRunner()


def test_grid_values_take_their_fields_types_and_cell_sets_both_cells():
    grid = sw.parse_grid(["attention=none,general", "input_feeding=on,false", "lr=1e-3", "cell=gru,gru"])
    assert grid == {
        "attention": ("none", "general"),
        "input_feeding": (True, False),
        "lr": (0.001,),
        "cell": ("gru",),  # a value given twice is one value
    }
    cells = sw.cells(grid, seeds=2)
    assert len(cells) == 2 * 2 * 1 * 1 * 2
    assert cells[0].name == "attention-none_input_feeding-on_lr-0.001_cell-gru_seed-0"
    assert cells[1].seed == 1 and cells[2].settings[1] == ("input_feeding", False)  # last key fastest
    model_cfg, train_cfg = sw.configs(
        sw.SweepSpec(DataConfig("a", "b")),
        cells[1],
        dict(zip(("model", "train"), preset("tiny"), strict=True)),
        50,
    )
    assert (model_cfg.encoder_cell, model_cfg.decoder_cell, model_cfg.attention) == ("gru", "gru", "none")
    assert train_cfg.lr == 0.001 and train_cfg.seed == 1234 + 1


def test_a_toml_grid_table_parses_as_the_flags_do():
    assert sw.parse_grid({"attention": ["none", "dot"], "input_feeding": [True, False]}) == sw.parse_grid(
        ["attention=none,dot", "input_feeding=true,false"]
    )


@pytest.mark.parametrize(
    "items, message",
    [
        (["attention"], "--grid takes key=value1,value2"),
        (["atention=none"], "unknown grid key 'atention'; valid:"),
        (["encoder_layers=two"], "grid key encoder_layers takes int values, got 'two'"),
        (["input_feeding=maybe"], "takes bool values"),
        (["attention=none", "attention=dot"], "given twice"),
        (["seed=1,2"], "unknown grid key 'seed'"),  # seeds come from --seeds
        ([], "the grid is empty"),
    ],
)
def test_bad_grids_are_one_clear_error(items, message):
    with pytest.raises(ConfigError, match=message):
        sw.parse_grid(items)


@pytest.fixture
def spec(corpus):
    return sw.SweepSpec(
        corpus, test_src=corpus.dev_src, test_tgt=corpus.dev_tgt, vocab_size=200, n_bootstrap=50
    )


TINY = {"model": preset("tiny")[0], "train": {**preset("tiny")[1], "max_steps": 2, "valid_max_sentences": 10}}


def test_a_killed_sweep_skips_its_finished_cells_and_redoes_the_rest(spec, tmp_path, monkeypatch):
    grid = sw.parse_grid(["attention=none,general"])
    first = sw.run_sweep(spec, grid, TINY, tmp_path)
    assert [r["cell"] for r in first] == ["attention-none_seed-0", "attention-general_seed-0"]
    assert first[0]["test_aer"] is None and first[1]["parameters"] > first[0]["parameters"]
    assert 0 <= first[1]["test_bleu"] <= 100 and first[1]["test_bleu_ci"] >= 0
    # "kill" the second cell half-way: its directory is there, its result is not
    (tmp_path / "cells" / "attention-general_seed-0" / "result.json").unlink()
    ran = []
    real = sw.run_cell
    monkeypatch.setattr(sw, "run_cell", lambda s, cell, run: ran.append(cell.name) or real(s, cell, run))
    again = sw.run_sweep(spec, grid, TINY, tmp_path)
    assert ran == ["attention-general_seed-0"]  # the finished cell was not trained again
    assert again[0] == first[0]
    # a finished cell whose settings changed is refused, not silently reused
    changed = {**TINY, "train": {**TINY["train"], "max_steps": 3}}
    with pytest.raises(ConfigError, match="ran other settings"):
        sw.run_sweep(spec, grid, changed, tmp_path)


def test_summary_gives_mean_and_sd_over_seeds():
    results = [
        {"settings": {"cell": "gru"}, "dev_bleu": 10.0, "test_aer": None},
        {"settings": {"cell": "gru"}, "dev_bleu": 14.0, "test_aer": None},
        {"settings": {"cell": "rnn"}, "dev_bleu": 5.0, "test_aer": 0.5},
    ]
    rows = sw.summarize(results)
    assert rows[0]["dev_bleu"] == 12.0 and rows[0]["dev_bleu_sd"] == pytest.approx(2**0.5 * 2)  # sd of 10, 14
    assert rows[0]["seeds"] == 2 and rows[0]["test_aer"] is None and rows[1]["test_aer"] == 0.5


def test_the_command_prints_a_table_csv_and_json_and_draws_by_length(corpus, tmp_path):
    common = [
        "sweep", "--preset", "tiny", "--max-steps", "2", "--grid", "cell=rnn", "--grid", "attention=none,dot",
        "--src", corpus.train_src, "--tgt", corpus.train_tgt, "--dev-src", corpus.dev_src,
        "--dev-tgt", corpus.dev_tgt, "--test-src", corpus.dev_src, "--test-tgt", corpus.dev_tgt,
        "--vocab-size", "200", "--threads", "1", "-o", str(tmp_path / "sw"),
        "--dev-align", str(head(DATA / "dev.align", tmp_path / "dev.align", 60)), "--test-align", "",
    ]  # fmt: skip
    table = runner.invoke(app, [*common, "--by-length", str(tmp_path / "len.svg")])
    assert table.exit_code == 0, table.stderr
    assert "test BLEU" in table.stdout and "dot" in table.stdout and "± " in table.stdout
    assert (tmp_path / "len.svg").read_bytes().startswith(b"<?xml") and "1-5" in table.stderr
    as_csv = runner.invoke(app, [*common, "--csv"])  # every cell is done: this only reads results
    lines = as_csv.stdout.splitlines()
    assert lines[0].startswith("cell,attention,seeds,dev_bleu,dev_bleu_sd") and len(lines) == 3
    as_json = json.loads(runner.invoke(app, [*common, "--json"]).stdout)
    assert [c["settings"]["attention"] for c in as_json["cells"]] == ["none", "dot"]
    assert as_json["cells"][1]["dev_aer"] is not None and as_json["cells"][1]["test_aer"] is None
    no_budget = runner.invoke(app, ["sweep", "--preset", "tiny", "--grid", "cell=rnn", "-o", str(tmp_path)])
    assert no_budget.exit_code == 1 and "give each cell a budget" in no_budget.stderr

"""The plain model, with every CPU swap off (NMT_PLAIN=1), learns the embedded corpus: the toy preset on
data/ reaches 90 BLEU on data/test. A fixed number of updates, so the test's outcome does not depend on
the machine's speed."""

from pathlib import Path

from typer.testing import CliRunner

from nmt_cli.checkpoint import read_info
from nmt_cli.cli import app

DATA = Path(__file__).resolve().parents[1] / "data"
STEPS = 500  # updates, not minutes: the outcome must not depend on the machine's speed

runner = CliRunner()


def test_the_plain_model_learns_the_toy_corpus_to_90_bleu(tmp_path, monkeypatch):
    monkeypatch.setenv("NMT_PLAIN", "1")
    run = tmp_path / "run"
    train = runner.invoke(
        app,
        [
            "train", "--preset", "toy", "--src", str(DATA / "train.en"), "--tgt", str(DATA / "train.de"),
            "--vocab-size", "300", "--max-steps", str(STEPS), "--valid-every", str(STEPS), "-o", str(run),
            "--quiet",
        ],
    )  # fmt: skip
    assert train.exit_code == 0, train.stderr
    assert read_info(run / "last.nmt")[1]["kernels"] == "plain"  # the run says which path it took
    hyp = tmp_path / "test.hyp.de"
    translate = runner.invoke(
        app,
        ["translate", "-m", str(run / "last.nmt"), "-b", "1", str(DATA / "test.en"), "-o", str(hyp), "-q"],
    )
    assert translate.exit_code == 0, translate.stderr
    scores = runner.invoke(
        app, ["evaluate", "-r", str(DATA / "test.de"), str(hyp), "--metrics", "bleu", "-b"]
    )
    assert scores.exit_code == 0, scores.stderr
    assert float(scores.stdout.split()[0]) >= 90.0, scores.stdout

"""plot: valid PNG/SVG/PDF files of the promised size, a readable terminal heatmap, training curves."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from rich.console import Console

from nmt_cli import plot
from nmt_cli.errors import ConfigError, InputError
from nmt_cli.plot import curve_points, save_attention, save_curves, terminal_heatmap

SRC = ["▁the", "▁do", "g", "▁sleeps"]
TGT = ["▁der", "▁Hund", "▁schläft"]
ATTENTION = [
    [0.7, 0.1, 0.1, 0.1],
    [0.1, 0.5, 0.3, 0.1],
    [0.0, 0.2, 0.2, 0.6],
]
# 4 source, 3 target tokens: (3 + 0.5 * 4) x (2.5 + 0.5 * 3) = 5 x 4 inches
PNG_SIZE = (500, 400)  # pixels at 100 dpi
POINT_SIZE = (360, 288)  # SVG and PDF points, 72 per inch


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the IHDR chunk, which must come first after the signature."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def render(renderable, **kwargs) -> str:
    console = Console(file=io.StringIO(), width=120, **kwargs)
    console.print(renderable)
    return console.file.getvalue()


def test_png_has_the_promised_size(tmp_path):
    path = tmp_path / "att.png"
    save_attention(ATTENTION, SRC, TGT, path, title="sentence 1")
    assert png_size(path.read_bytes()) == PNG_SIZE
    assert [p.name for p in tmp_path.iterdir()] == ["att.png"]  # no temporary file left behind


def test_svg_is_xml_with_an_svg_root(tmp_path):
    path = tmp_path / "att.svg"
    save_attention(ATTENTION, SRC, TGT, path)
    root = ET.fromstring(path.read_bytes())
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert (root.get("width"), root.get("height")) == tuple(f"{n}pt" for n in POINT_SIZE)


def test_pdf_has_the_promised_page(tmp_path):
    path = tmp_path / "att.PDF"  # the suffix is read case-insensitively
    save_attention(ATTENTION, SRC, TGT, path)
    data = path.read_bytes()
    assert data.startswith(b"%PDF-")
    assert re.search(rb"/MediaBox \[ ?0 0 (\d+) (\d+) ?\]", data).groups() == tuple(
        str(n).encode() for n in POINT_SIZE
    )


def test_the_same_plot_gives_the_same_bytes(tmp_path):
    for suffix in ("png", "svg", "pdf"):
        first, second = tmp_path / f"a.{suffix}", tmp_path / f"b.{suffix}"
        save_attention(ATTENTION, SRC, TGT, first)
        save_attention(ATTENTION, SRC, TGT, second)
        assert first.read_bytes() == second.read_bytes(), suffix


def test_unknown_suffix_lists_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"\.jpg; use one of \.png, \.svg, \.pdf"):
        save_attention(ATTENTION, SRC, TGT, tmp_path / "att.jpg")
    with pytest.raises(ConfigError, match="without suffix"):
        save_curves([{"step": 1, "loss": 2.0}], tmp_path / "curves")
    assert list(tmp_path.iterdir()) == []


def test_shape_mismatch_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match=r"shape \(3, 4\) but 3 target x 3 source tokens"):
        save_attention(ATTENTION, SRC[:3], TGT, tmp_path / "att.png")
    with pytest.raises(InputError, match="rectangular"):
        terminal_heatmap([[0.5, 0.5], [1.0]], ["a", "b"], ["x", "y"])
    with pytest.raises(InputError, match="NaN"):
        terminal_heatmap([[float("nan")]], ["a"], ["x"])
    assert list(tmp_path.iterdir()) == []


def test_terminal_heatmap_without_colour():
    out = render(
        terminal_heatmap([[1.0, 0.5, 0.0], [0.2, 0.3, 0.8]], ["a", "[b]", "Hauptbahnhof"], ["x", "yy"], False)
    )
    lines = out.splitlines()
    # headers: cut to 6 cells; "[b]" printed as written, not read as rich markup
    assert lines[0] == "   a  [b] Haupt…"
    # cells as wide as their header (at least 2); 1 -> █, .5 -> ▒, .2 and .3 -> ░, .8 -> ▓
    assert lines[1] == " x ██ ▒▒▒       "
    assert lines[2] == "yy ░░ ░░░ ▓▓▓▓▓▓"
    assert "\x1b[" not in out


def test_shades_round_to_the_nearest_quarter():
    weights = [0.0, 0.12, 0.13, 0.37, 0.38, 0.62, 0.63, 0.87, 0.88, 1.0, 1.5, -0.1]
    names = [chr(ord("a") + k) for k in range(len(weights))]
    row = render(terminal_heatmap([weights], names, ["t"], color=False)).splitlines()[1]
    assert row[2::3] == "  ░░▒▒▓▓███ "  # one character per 2-cell column; out-of-range weights clipped


def test_terminal_heatmap_with_colour():
    out = render(
        terminal_heatmap([[1.0, 0.0]], ["a", "b"], ["x"]), force_terminal=True, color_system="truecolor"
    )
    assert "\x1b[48;2;253;231;37m" in out  # weight 1: viridis yellow background
    assert "\x1b[48;2;68;1;84m" in out  # weight 0: viridis purple
    assert not set("░▒▓█") & set(out.splitlines()[1])  # colour alone, no shade characters


def test_curve_points_skip_records_without_the_keys():
    records = [
        {"step": 100, "wall": 30.0, "loss": 4.0, "lr": 0.001},
        {"step": 200, "wall": 90.0, "loss": 3.0, "dev_bleu": 12.5},
        {"step": 300, "wall": 150.0, "dev_bleu": None},
    ]
    assert curve_points(records, "step", "loss") == ([100.0, 200.0], [4.0, 3.0])
    assert curve_points(records, "wall", "dev_bleu") == ([1.5], [12.5])  # seconds -> minutes
    assert curve_points(records, "step", "dev_loss") == ([], [])
    with pytest.raises(InputError, match="training record 2: loss is 'high', expected a number"):
        curve_points([records[0], {"step": 1, "loss": "high"}], "step", "loss")


def test_save_curves(tmp_path):
    records = [{"step": s, "wall": 6.0 * s, "loss": 5 - s / 100, "lr": 1e-3} for s in range(0, 300, 10)]
    records += [{"step": 100, "wall": 600.0, "dev_bleu": 10.0, "dev_loss": 4.5}]
    save_curves(records, tmp_path / "curves.png")
    assert png_size((tmp_path / "curves.png").read_bytes()) == (1000, 800)  # 10 x 8 inches at 100 dpi
    with pytest.raises(InputError, match="no records"):
        save_curves([], tmp_path / "empty.png")


def test_importing_plot_does_not_load_matplotlib():
    code = "import sys, nmt_cli.plot; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".svg", b"<?xml"), (".pdf", b"%PDF")])
def test_bleu_by_length_is_one_picture_of_every_system(tmp_path, suffix, magic):
    series = {
        "none": [("1-5", 3, 40.0), ("6-10", 4, 20.0), ("11+", 0, None)],
        "general": [("1-5", 3, 41.0), ("6-10", 4, 39.0), ("11+", 0, None)],
    }
    plot.save_by_length(series, tmp_path / f"len{suffix}")
    assert (tmp_path / f"len{suffix}").read_bytes().startswith(magic)
    text = _render(plot.by_length_table(series))
    assert "6-10 (4)" in text and "39.0" in text and "-" in text  # an empty bucket shows as -


def test_evaluate_by_length_buckets_each_system_by_source_words(tmp_path):
    from typer.testing import CliRunner

    from nmt_cli.cli import app

    # source lengths 2 and 7 words: buckets 1-5 and 6-10; system b is perfect only on the short line
    (tmp_path / "src").write_text("a b\nc d e f g h i\n")
    (tmp_path / "ref").write_text("the cat sat on the mat\nthe dog ran in the big green park today\n")
    (tmp_path / "a").write_text("the cat sat on the mat\nthe dog ran in the big green park today\n")
    (tmp_path / "b").write_text("the cat sat on the mat\nnothing like it\n")
    args = [
        "evaluate",
        "-r",
        tmp_path / "ref",
        tmp_path / "a",
        tmp_path / "b",
        "--by-length",
        tmp_path / "src",
    ]
    result = CliRunner().invoke(app, [str(a) for a in [*args, "--json"]])
    assert result.exit_code == 0, result.stderr
    bleu = {(r["system"], r["bucket"]): r["bleu"] for r in json.loads(result.stdout)}
    assert bleu[(str(tmp_path / "a"), "6-10")] == pytest.approx(100.0)
    assert bleu[(str(tmp_path / "b"), "6-10")] == 0.0
    assert (
        bleu[(str(tmp_path / "b"), "1-5")] == pytest.approx(100.0)
        and bleu[(str(tmp_path / "b"), "21+")] is None
    )
    drawn = CliRunner().invoke(app, [str(a) for a in [*args, "--plot", tmp_path / "len.png"]])
    assert drawn.exit_code == 0 and (tmp_path / "len.png").read_bytes().startswith(b"\x89PNG")


def _render(table) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=160, force_terminal=False).print(table)
    return buffer.getvalue()

"""The bad-input matrix: each command meets each kind of broken input, one row each.

Every row ends in the documented result or in exactly one stderr line `nmt: error: ...` with exit 1:
never a traceback, never a partial output file. Broken inputs are made of a small good corpus: its
first input (source, or hypotheses for evaluate) is changed in one way per row.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from nmt_cli import checkpoint, textio
from nmt_cli.cli import app

runner = CliRunner()
GOOD_LINES = 40  # enough text for an 80-piece SentencePiece model (prepare, train)
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
EIO = OSError(errno.EIO, os.strerror(errno.EIO))

# first-input variants: (name, how the good bytes change) ------------------------------------------------


def _bad_utf8(data: bytes) -> bytes:
    lines = data.splitlines(keepends=True)
    return b"".join([lines[0], b"ein \xff Hund\n", *lines[2:]])  # line 2, byte 4


def _binary(data: bytes) -> bytes:
    return bytes(range(256))  # '\n' is byte 10: line 2 starts at byte 11 and breaks at 128 - 11


INPUTS: dict[str, Callable[[bytes], bytes]] = {
    "empty": lambda data: b"",
    "invalid-utf8": _bad_utf8,
    "bom": lambda data: b"\xef\xbb\xbf" + data,
    "crlf": lambda data: data.replace(b"\n", b"\r\n"),
    "nul": lambda data: data.replace(b" ", b" \x00", 1),
    "fewer-lines": lambda data: b"".join(data.splitlines(keepends=True)[:-1]),
    "binary": _binary,
}
BROKEN_INPUT_ERRORS = {
    "invalid-utf8": r"{src}:2: invalid UTF-8 at byte 4$",
    "binary": r"{src}:2: invalid UTF-8 at byte 117$",
    "directory": r"{src}: is a directory, expected a text file$",
    "missing": r"{src}: no such file$",
    "read-error": r"{src}:4: cannot read: Input/output error$",
}


class World:
    """The files of one row: a good corpus, the trained model, an output place."""

    def __init__(self, tmp_path: Path, corpus, trained: Path):
        self.tmp = tmp_path
        self.model = trained
        self.src_good = _head(Path(corpus.train_src), GOOD_LINES)
        self.tgt_good = _head(Path(corpus.train_tgt), GOOD_LINES)
        self.src = tmp_path / "src.txt"  # the first input, as the row changes it
        self.tgt = tmp_path / "tgt.txt"
        self.src.write_bytes(self.src_good)
        self.tgt.write_bytes(self.tgt_good)
        self.out_dir = tmp_path / "out"
        self.out = self.out_dir / "out.txt"

    def lines(self) -> int:
        return len(textio.read_lines(self.src))


def _head(path: Path, n: int) -> bytes:
    with open(path, "rb") as f:
        return b"".join(f.readline() for _ in range(n))


# the commands: arguments, and what a good run leaves ---------------------------------------------------


def _translate(w: World) -> list:
    return ["translate", "-m", w.model, w.src, "-o", w.out, "-b", "2", "-q"]


def _score(w: World) -> list:
    return ["score", "-m", w.model, "--src", w.src, "--tgt", w.tgt, "-q"]


def _align(w: World) -> list:
    return ["align", "-m", w.model, "--src", w.src, "--tgt", w.tgt, "-o", w.out]


def _evaluate(w: World) -> list:
    return ["evaluate", w.src, "-r", w.tgt, "--metrics", "bleu"]


def _prepare(w: World) -> list:
    return ["prepare", "--src", w.src, "--tgt", w.tgt, "-o", w.out_dir, "--vocab-size", "80"]


def _train(w: World) -> list:
    return ["train", "--src", w.src, "--tgt", w.tgt, "-o", w.out_dir, "--preset", "tiny"] + [
        "--max-steps", "1", "--vocab-size", "80", "--valid-every", "1", "-q"
    ]  # fmt: skip


COMMANDS = {
    "translate": _translate,
    "score": _score,
    "align": _align,
    "evaluate": _evaluate,
    "prepare": _prepare,
    "train": _train,
}
WRITES = {  # what each command writes, for "no partial output" and "wrote its result"
    "translate": ["out.txt"],
    "align": ["out.txt"],
    "prepare": ["spm.model", "prepare.json"],
    "train": ["last.nmt", "model.nmt"],
}
TAKES_MODEL = ("translate", "score", "align")
PARALLEL = ("score", "align", "prepare", "train", "evaluate")


def _ok(command: str, w: World, result, lines: int) -> None:
    """A good run: exit 0 and one output line per input line where the command keeps the line contract."""
    assert result.exit_code == 0, result.stderr
    assert "Traceback" not in result.stderr
    if command in ("translate", "align"):
        assert len(w.out.read_bytes().split(b"\n")) - 1 == lines
    elif command == "score":
        assert result.stdout.count("\n") == lines
    elif command == "evaluate":
        assert result.stdout.startswith("BLEU|")
    else:
        assert all((w.out_dir / name).is_file() for name in WRITES[command])


def _one_error(command: str, w: World, result, pattern: str) -> None:
    """Exit 1, one stderr line `nmt: error: ...` matching pattern, no output file (not even a partial one)."""
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    lines = [line for line in result.stderr.splitlines() if not line.startswith(("nmt: warning", "decode|"))]
    assert len(lines) == 1 and lines[0].startswith("nmt: error: "), result.stderr
    message = lines[0].removeprefix("nmt: error: ")
    where = {"src": re.escape(str(w.src)), "out": re.escape(str(w.out)), "model": re.escape(str(w.model))}
    assert re.search(pattern.format(**where), message), (pattern, message)
    for name in WRITES.get(command, []):
        assert not (w.out_dir / name).is_file(), name
    leftovers = [p.name for p in w.out_dir.glob(".*.tmp")] if w.out_dir.is_dir() else []
    assert not leftovers


def _invoke(args: list):
    return runner.invoke(app, [str(a) for a in args])


# rows ---------------------------------------------------------------------------------------------------

# the documented result of an empty input: translate, score and align answer with nothing; evaluate and
# the trainers have nothing to work on
EMPTY_ERRORS = {
    "evaluate": r"{src}: hypothesis file is empty: nothing to score$",
    "prepare": r"no non-empty lines to train the subword model on",
    "train": r"no non-empty lines to train the subword model on",
}
INPUT_ROWS = [
    (command, case) for command in COMMANDS for case in (*INPUTS, "directory", "missing", "read-error")
]
INPUT_ROWS = [(c, k) for c, k in INPUT_ROWS if not (k == "fewer-lines" and c not in PARALLEL)]


@pytest.mark.parametrize(("command", "case"), INPUT_ROWS, ids=[f"{c}-{k}" for c, k in INPUT_ROWS])
def test_broken_input(command, case, tmp_path, corpus, trained, monkeypatch):
    w = World(tmp_path, corpus, trained)
    if case in INPUTS:
        w.src.write_bytes(INPUTS[case](w.src_good))
        if case == "empty" and command in PARALLEL:
            w.tgt.write_bytes(b"")  # both sides empty: a parallel corpus of no lines
    elif case == "directory":
        w.src.unlink()
        w.src.mkdir()
    elif case == "missing":
        w.src.unlink()
    elif case == "read-error":
        _fail_reading(monkeypatch, w.src, after_lines=3)
    result = _invoke(COMMANDS[command](w))
    if case == "empty" and command in EMPTY_ERRORS:
        _one_error(command, w, result, EMPTY_ERRORS[command])
    elif case in BROKEN_INPUT_ERRORS:
        _one_error(command, w, result, BROKEN_INPUT_ERRORS[case])
    elif case == "fewer-lines":
        _one_error(command, w, result, rf"has {GOOD_LINES - 1} lines but .* has {GOOD_LINES}")
    else:  # empty, BOM, CRLF, NUL: one line each as read, the BOM and the CR before '\n' left out
        _ok(command, w, result, w.lines())


def _fail_reading(monkeypatch, path: Path, after_lines: int) -> None:
    """Reading path gives after_lines lines, then EIO, as a failing disk or a network file does."""
    real_open = open

    class Failing(io.RawIOBase):
        def __init__(self) -> None:
            self.lines = path.read_bytes().splitlines(keepends=True)[:after_lines]

        def readable(self) -> bool:
            return True

        def __next__(self) -> bytes:
            if not self.lines:
                raise EIO
            return self.lines.pop(0)

        def readinto(self, b):  # noqa: ANN001, ANN202
            raise EIO

    def fake_open(file, mode="r", *args, **kwargs):  # noqa: ANN001, ANN202
        if Path(file) == path and "r" in mode:
            return Failing()
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(textio, "open", fake_open, raising=False)


# model files ---------------------------------------------------------------------------------------------


def _rewrite(w: World, change: Callable[[dict, dict], None]) -> None:
    """The trained model's tensors and metadata, changed, saved as w.model."""
    tensors = {k: v.clone() for k, v in load_file(w.trained).items()}
    blob = w.trained.read_bytes()
    metadata = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])["__metadata__"]
    change(tensors, metadata)
    save_file(tensors, w.model, metadata=metadata)


def _fp16(tensors: dict, metadata: dict) -> None:
    for name, t in tensors.items():
        if t.is_floating_point():
            tensors[name] = t.half()


MODELS: dict[str, tuple[Callable[[World], None], str | None]] = {
    "missing": (lambda w: None, r"{model}: no such model file$"),
    "truncated": (
        lambda w: w.model.write_bytes(w.trained.read_bytes()[: w.trained.stat().st_size // 2]),
        r"{model}: damaged model file: ",
    ),
    "garbled": (
        lambda w: w.model.write_bytes(bytes(range(256)) * 64),
        r"{model}: not an nmt model file \(no safetensors header\)$",
    ),
    "future-version": (
        lambda w: _rewrite(w, lambda t, m: m.update(format="nmt-ckpt/2")),
        r"{model}: model.nmt was written by format nmt-ckpt/2; this nmt \(.*\) reads nmt-ckpt/1"
        r" — upgrade nmt$",
    ),
    "not-nmt": (
        lambda w: _rewrite(w, lambda t, m: m.update(format="other/1")),
        r"{model}: not an nmt model file \(format 'other/1', expected nmt-ckpt/1\)$",
    ),
    "no-config": (
        lambda w: _rewrite(w, lambda t, m: m.pop("config")),
        r"{model}: damaged model file: its header has no model config$",
    ),
    "bad-config": (
        lambda w: _rewrite(w, lambda t, m: m.update(config='{"vocab_size": "many"')),
        r"{model}: damaged model file: its model config: ",
    ),
    "no-subword": (
        lambda w: _rewrite(w, lambda t, m: t.pop("__subword_model__")),
        r"{model}: damaged model file: no subword model \(__subword_model__\)$",
    ),
    "half-shortlist": (
        lambda w: _rewrite(w, lambda t, m: t.update({"__extra__.shortlist.table": torch.zeros(3, 2)})),
        r"{model}: damaged model file: its shortlist table lacks shortlist.frequent$",
    ),
    "fp16": (lambda w: _rewrite(w, _fp16), None),  # documented: widened to fp32 on load
    "directory": (lambda w: w.model.mkdir(), r"{model}: cannot read model file: Is a directory$"),
}
MODEL_ROWS = [(c, k) for c in TAKES_MODEL for k in MODELS]


@pytest.mark.parametrize(("command", "case"), MODEL_ROWS, ids=[f"{c}-{k}" for c, k in MODEL_ROWS])
def test_broken_model_file(command, case, tmp_path, corpus, trained, monkeypatch):
    w = World(tmp_path, corpus, trained)
    w.trained = trained
    w.model = tmp_path / "model.nmt"
    make, pattern = MODELS[case]
    make(w)
    result = _invoke(COMMANDS[command](w))
    if pattern is None:
        _ok(command, w, result, GOOD_LINES)
    else:
        _one_error(command, w, result, pattern)


# output places ---------------------------------------------------------------------------------------------

WRITERS = ("translate", "align", "prepare", "train")
OUTPUT_ROWS = [(c, k) for c in WRITERS for k in ("unwritable", "full-disk", "output-is-directory")]
OUTPUT_ROWS = [
    (c, k) for c, k in OUTPUT_ROWS if not (k == "output-is-directory" and c in ("prepare", "train"))
]


def _unwritable(tmp_path: Path) -> Path:
    """A directory nothing can be written into: read-only by mode, or (as root, whom modes do not stop)
    a read-only system directory."""
    d = tmp_path / "read-only"
    d.mkdir()
    d.chmod(0o555)
    try:
        (d / "probe").write_bytes(b"")
    except OSError:
        return d
    (d / "probe").unlink()
    d.chmod(0o755)
    if os.path.isdir("/sys") and _refuses("/sys"):
        return Path("/sys")
    pytest.skip("no directory here refuses writes: running as root with no read-only filesystem")


def _refuses(directory: str) -> bool:
    try:
        with open(os.path.join(directory, ".nmt-probe"), "wb"):
            pass
    except OSError:
        return True
    os.unlink(os.path.join(directory, ".nmt-probe"))
    return False


def _fill_disk(monkeypatch) -> None:
    """Every save runs out of space half-way, as on a full disk: text writes, torch.save, safetensors."""
    real_open = open

    class Full(io.BufferedWriter):
        written = 0

        def write(self, data):  # noqa: ANN001, ANN202
            if self.written + len(data) > 64:
                raise ENOSPC
            self.written += len(data)
            return super().write(data)

    def fake_open(file, mode="r", *args, **kwargs):  # noqa: ANN001, ANN202
        if "w" in mode and "b" in mode:
            return Full(real_open(file, "wb", buffering=0))
        return real_open(file, mode, *args, **kwargs)

    def full_safetensors(tensors, filename, metadata=None):  # noqa: ANN001, ANN202
        Path(filename).write_bytes(b"\0" * 64)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(textio, "open", fake_open, raising=False)
    monkeypatch.setattr(checkpoint, "save_safetensors_file", full_safetensors)


@pytest.mark.parametrize(("command", "case"), OUTPUT_ROWS, ids=[f"{c}-{k}" for c, k in OUTPUT_ROWS])
def test_output_that_cannot_be_written(command, case, tmp_path, corpus, trained, monkeypatch):
    w = World(tmp_path, corpus, trained)
    if case == "unwritable":
        w.out_dir = _unwritable(tmp_path)
        w.out = w.out_dir / "out.txt"
        pattern = r"{out_dir}/[^:]+: cannot write: (Permission denied|Read-only file system)$"
    elif case == "full-disk":
        _fill_disk(monkeypatch)
        pattern = r"{out_dir}/[^:]+: cannot write: No space left on device"
    else:
        w.out.mkdir(parents=True)
        pattern = r"{out}: is a directory, expected a file to write$"
    result = _invoke(COMMANDS[command](w))
    _one_error(command, w, result, pattern.replace("{out_dir}", re.escape(str(w.out_dir))))


ROWS = len(INPUT_ROWS) + len(MODEL_ROWS) + len(OUTPUT_ROWS)  # reported in the README's Guarantees

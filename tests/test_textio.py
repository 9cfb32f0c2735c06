"""Exact lines, one-line errors with path:line, atomic writes, streamed chunks."""

import io
import os
import threading
import time

import pytest

from nmt_cli.errors import InputError
from nmt_cli.textio import atomic_write, iter_lines, read_lines, read_parallel, stream_chunks


def test_only_newline_ends_a_line():
    raw = "a\rb\u2028c\u0085d\u2029e\r\n\nlast".encode()
    assert list(iter_lines(io.BytesIO(raw), "x")) == ["a\rb\u2028c\u0085d\u2029e", "", "last"]


def test_invalid_utf8_names_path_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"fine\nalso fine\nbro\xffken\n")
    with pytest.raises(InputError) as err:
        read_lines(path)
    assert str(err.value) == f"{path}:3: invalid UTF-8 at byte 3"


def test_missing_file_and_count_mismatch(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_lines(tmp_path / "nope")
    (tmp_path / "a").write_text("1\n2\n3\n")
    (tmp_path / "b").write_text("1\n2\n")
    with pytest.raises(InputError, match="has 3 lines but .* has 2") as err:
        read_parallel(tmp_path / "a", tmp_path / "b")
    assert err.value.line == 3 and err.value.path.endswith("b")


def test_atomic_write_leaves_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(path) as f:
        f.write(b"half")
        raise RuntimeError("crash in the middle")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]  # no temporary file left behind


def test_stream_chunks_answers_before_end_of_input():
    read_fd, write_fd = os.pipe()
    reader = os.fdopen(read_fd, "rb")
    writer = os.fdopen(write_fd, "wb")
    chunks = stream_chunks(reader, "-", max_lines=64)
    writer.write(b"first line\n")
    writer.flush()
    got: list = []
    t = threading.Thread(target=lambda: got.append(next(chunks)))
    t.start()
    t.join(timeout=10)
    assert got == [["first line"]]  # arrived while the writer is still open
    writer.write(b"second\nthird\n")
    writer.close()
    assert [line for chunk in chunks for line in chunk] == ["second", "third"]


def test_stream_chunks_bounded_and_ordered():
    data = "".join(f"{i}\n" for i in range(1000)).encode()
    chunks = list(stream_chunks(io.BytesIO(data), "x", max_lines=64))
    assert all(len(c) <= 64 for c in chunks)
    assert [int(x) for c in chunks for x in c] == list(range(1000))


def test_a_regular_file_is_cut_into_full_chunks_however_slowly_it_is_read(tmp_path, monkeypatch):
    import nmt_cli.textio as textio

    path = tmp_path / "in.txt"
    path.write_text("".join(f"{i}\n" for i in range(150)))
    read = textio.iter_lines

    def slowly(stream, name):
        for line in read(stream, name):
            time.sleep(0.001)  # a reader slower than the consumer: chunks of what has arrived would be tiny
            yield line

    monkeypatch.setattr(textio, "iter_lines", slowly)
    with path.open("rb") as stream:
        chunks = list(stream_chunks(stream, str(path), max_lines=64))
    assert [len(c) for c in chunks] == [64, 64, 22]
    assert [int(x) for c in chunks for x in c] == list(range(150))

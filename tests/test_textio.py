"""Exact lines, one-line errors with path:line, atomic writes, streamed chunks."""

import io
import os
import stat
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


class _FailsAfter(io.RawIOBase):
    """A stream that gives two lines, then a read error that is not bad UTF-8 (as /proc/self/mem does)."""

    def __init__(self) -> None:
        self.lines = [b"one\n", b"two\n"]

    def readable(self) -> bool:
        return True

    def __next__(self) -> bytes:
        if not self.lines:
            raise OSError(5, "Input/output error")
        return self.lines.pop(0)


def test_a_read_error_names_its_line():
    with pytest.raises(InputError, match=r"^x:3: cannot read: Input/output error$"):
        list(iter_lines(_FailsAfter(), "x"))


def test_any_error_of_the_reader_thread_ends_the_stream():
    # before: the reader thread died with a traceback, and the caller waited for a line forever
    got: list = []

    def consume() -> None:
        try:
            got.extend(stream_chunks(_FailsAfter(), "x", 10))
        except InputError as err:
            got.append(err)

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    t.join(timeout=10)
    assert not t.is_alive(), "stream_chunks hung after a read error"
    assert got[0] == ["one", "two"] and str(got[1]) == "x:3: cannot read: Input/output error"


def test_a_byte_order_mark_is_not_text():
    assert list(iter_lines(io.BytesIO(b"\xef\xbb\xbfa\r\n\xef\xbb\xbfb\n"), "x")) == ["a", "\ufeffb"]


def test_atomic_write_fsyncs_the_directory_after_the_rename(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append((_is_dir(fd), (tmp_path / "f").exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with atomic_write(tmp_path / "f") as f:
        f.write(b"data")
    assert synced == [(False, False), (True, True)]  # the file before the rename, its directory after


def _is_dir(fd: int) -> bool:
    return stat.S_ISDIR(os.fstat(fd).st_mode)


def test_files_are_written_with_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "f") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o644


def test_a_full_disk_is_one_error_and_leaves_nothing(tmp_path):
    full = pytest.raises(InputError, match=r"f: cannot write: No space left on device$")
    with full, atomic_write(tmp_path / "f") as f:
        f.write(b"half")
        raise OSError(28, "No space left on device")
    assert list(tmp_path.iterdir()) == []

"""Exact line I/O: only '\\n' ends a line, bad UTF-8 names its line, writes are atomic."""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from nmt_cli.errors import InputError

STDIN = "-"
UTF8_BOM = b"\xef\xbb\xbf"


def iter_lines(stream: BinaryIO, path: str) -> Iterator[str]:
    """Each line exactly as written, empty lines included; '\\r', U+2028, U+0085 never split one.

    A '\\r' before the '\\n' and a UTF-8 byte-order mark at the start of the file are left out.

    A read error (EIO, a file that cannot be read as a stream) is an InputError naming the line it hit.
    """
    for n, raw in enumerate(_raw_lines(stream, path), start=1):  # split on b"\n" only
        if n == 1:
            raw = raw.removeprefix(UTF8_BOM)  # a byte-order mark (Windows editors) is not text
        try:
            yield raw.removesuffix(b"\n").removesuffix(b"\r").decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"invalid UTF-8 at byte {e.start}", path, n) from None


def _raw_lines(stream: BinaryIO, path: str) -> Iterator[bytes]:
    n = 0
    lines = iter(stream)
    while True:
        try:
            raw = next(lines)
        except StopIteration:
            return
        except OSError as e:
            raise InputError(f"cannot read: {e.strerror or e}", path, n + 1) from None
        n += 1
        yield raw


@contextmanager
def open_binary(path: str | Path) -> Iterator[BinaryIO]:
    """Open a file (or stdin for '-') for binary reading, with a one-line error when it can't be."""
    if str(path) == STDIN:
        yield sys.stdin.buffer
        return
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise InputError("no such file", str(path)) from None
    except IsADirectoryError:
        raise InputError("is a directory, expected a text file", str(path)) from None
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", str(path)) from None
    with f:
        yield f


def read_lines(path: str | Path) -> list[str]:
    """All lines of a file (or stdin for '-')."""
    with open_binary(path) as f:
        return list(iter_lines(f, str(path)))


def read_parallel(src_path: str | Path, tgt_path: str | Path) -> tuple[list[str], list[str]]:
    """Both sides of a parallel corpus; different line counts are an error naming both files."""
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        _count_mismatch(src_path, tgt_path, len(src), len(tgt))
    return src, tgt


def iter_parallel(src_path: str | Path, tgt_path: str | Path) -> Iterator[tuple[str, str]]:
    """Line pairs of a parallel corpus, streamed; different counts are read_parallel's error."""
    from itertools import zip_longest

    with open_binary(src_path) as fs, open_binary(tgt_path) as ft:
        src, tgt = iter_lines(fs, str(src_path)), iter_lines(ft, str(tgt_path))
        for n, (s, t) in enumerate(zip_longest(src, tgt)):
            if s is None or t is None:
                rest_src, rest_tgt = sum(1 for _ in src), sum(1 for _ in tgt)
                n_src, n_tgt = n + (s is not None) + rest_src, n + (t is not None) + rest_tgt
                _count_mismatch(src_path, tgt_path, n_src, n_tgt)
            yield s, t


def _count_mismatch(src_path: str | Path, tgt_path: str | Path, n_src: int, n_tgt: int) -> None:
    shorter = src_path if n_src < n_tgt else tgt_path
    raise InputError(
        f"{src_path} has {n_src} lines but {tgt_path} has {n_tgt}: a parallel corpus needs equal counts",
        str(shorter),
        min(n_src, n_tgt) + 1,
    )


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside path to write to; then fsync and rename: readers see old or new, never half."""
    path = Path(path)
    if path.is_dir():
        raise InputError("is a directory, expected a file to write", str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create directory: {e.strerror}", str(path.parent)) from None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        # created here, so an unwritable place fails before any work, and with the umask's mode
        # (0644 as a rule): whatever the caller writes it with keeps this file's mode
        tmp.open("wb").close()
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_directory(path.parent)  # the rename itself reaches the disk before we say done
    except BrokenPipeError:
        raise  # stdout closed under the caller (`| head`): not a problem with this file
    except OSError as e:  # a full disk, a read-only directory, a quota
        raise InputError(f"cannot write: {e.strerror or e}", str(path)) from None
    finally:
        with contextlib.suppress(OSError):  # nothing was left there to remove, or nothing can be
            tmp.unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in directory durable; where a directory cannot be opened for it, nothing."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the file itself is already synced
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: str | Path) -> Iterator[BinaryIO]:
    """atomic_path, opened for writing."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        yield f


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text.encode("utf-8"))


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON object as a line (logs: an interrupted append loses at most that line)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    records = []
    for n, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise InputError(f"not JSON: {e.msg}", str(path), n) from None
    return records


def _is_regular_file(stream: BinaryIO) -> bool:
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (OSError, ValueError, io.UnsupportedOperation):  # no file descriptor: an in-memory stream
        return False


def stream_chunks(stream: BinaryIO, path: str, max_lines: int) -> Iterator[list[str]]:
    """Lines in chunks of what has arrived (at most max_lines): waits only for the first line of a chunk.

    A reader thread feeds a bounded queue, so a file is read ahead in full chunks for fast batching
    while an interactive stream (`tail -f`, a coprocess) gets each line translated as soon as it comes.
    A regular file (as stdin too) is cut into full chunks: reading it never waits for a writer, and its
    batches then never depend on how fast the reader ran, nor do the last bits of its scores.
    """
    import queue
    import threading

    done = object()
    lines: queue.Queue = queue.Queue(maxsize=4 * max_lines)  # bounded: memory stays flat on endless input

    def read() -> None:
        try:
            for line in iter_lines(stream, path):
                lines.put(line)
        except Exception as err:  # noqa: BLE001 - any of them ends the run, in the caller's thread
            lines.put(err if isinstance(err, InputError) else InputError(f"cannot read: {err}", path))
        lines.put(done)

    full_chunks = _is_regular_file(stream)
    threading.Thread(target=read, daemon=True).start()
    while True:
        chunk, item = [], lines.get()
        while item is not done:
            if isinstance(item, InputError):
                if chunk:
                    yield chunk
                raise item
            chunk.append(item)
            if len(chunk) >= max_lines:
                break
            try:
                item = lines.get(block=full_chunks)
            except queue.Empty:
                break
        if chunk:
            yield chunk
        if item is done:
            return

"""The prepared corpus: subword ids encoded once into numpy files, checked against digests.

A store is a folder `store/` beside its subword model `spm.model`:

    src.npy, tgt.npy   every kept pair's ids, end to end (uint16 when the vocabulary fits, else uint32)
    offsets.npy        int64 (2, pairs + 1): where each pair's source and target start in them
    lengths.npy        int32 (2, pairs): source and target lengths, what batching reads
    lines.npy          int64 (pairs,): the 1-based corpus line of each pair
    store.json         written last: format, counts, the sha256 of both corpus files and of spm.model

Pairs with an empty side are left out when encoding (they cannot be trained on); pairs over a run's
max_len are left out when the run opens the store, so one store serves any max_len. The .npy files can
be memory-mapped (np.load(mmap_mode="r")); training reads the pairs of each batch with pread (_Npy).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from itertools import chain, compress, islice
from pathlib import Path
from typing import Any

import numpy as np

from nmt_cli.config import DataConfig
from nmt_cli.data import SHOW_LINES, Example, LoadReport, load_parallel
from nmt_cli.errors import CheckpointError, ConfigError, InputError
from nmt_cli.subword import UNK, Subword
from nmt_cli.textio import atomic_path, atomic_write, iter_parallel, open_binary, write_text_atomic

log = logging.getLogger(__name__)

FORMAT = 1
STORE_DIR = "store"
META = "store.json"
ARRAYS = ("src.npy", "tgt.npy", "offsets.npy", "lengths.npy", "lines.npy")
CHUNK_PAIRS = 50_000  # pairs encoded per call into sentencepiece's threads: a few MB of Python lists


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (memory stays flat on any size)."""
    h = hashlib.sha256()
    with open_binary(path) as f:  # a missing or unreadable file is a one-line error
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _chunks(pairs: Iterator[tuple[str, str]], size: int) -> Iterator[list[tuple[str, str]]]:
    while chunk := list(islice(pairs, size)):
        yield chunk


def build_store(src_path: str | Path, tgt_path: str | Path, subword: Subword, out_dir: str | Path) -> dict:
    """Encode a parallel corpus once into out_dir/store/ and return its meta; subword is out_dir/spm.model."""
    sides = {"src": str(src_path), "tgt": str(tgt_path)}
    digests = {  # first: a file that cannot be read stops it before anything is written
        side: {"path": str(Path(p).resolve()), "sha256": sha256_file(p), **_stat(p)}
        for side, p in sides.items()
    }
    folder = Path(out_dir) / STORE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / META).unlink(missing_ok=True)  # a half-rewritten store must not pass for the old one
    dtype = np.dtype(np.uint16 if subword.vocab_size <= 1 << 16 else np.uint32)
    raw = {side: folder / f".{side}.{os.getpid()}.ids" for side in sides}
    lengths: list[np.ndarray] = []
    lines: list[np.ndarray] = []
    unk = {"src": 0, "tgt": 0}
    total = 0
    try:
        files = {side: open(raw[side], "wb") for side in sides}  # noqa: SIM115 - closed below
        with files["src"], files["tgt"]:
            for chunk in _chunks(iter_parallel(src_path, tgt_path), CHUNK_PAIRS):
                encoded = {
                    "src": subword.encode_batch([s for s, _ in chunk]),
                    "tgt": subword.encode_batch([t for _, t in chunk]),
                }
                n = len(chunk)
                ls, lt = (np.fromiter(map(len, encoded[side]), np.int32, n) for side in ("src", "tgt"))
                keep = (ls > 0) & (lt > 0)
                for side, side_lengths in (("src", ls), ("tgt", lt)):
                    ids = chain.from_iterable(compress(encoded[side], keep))
                    flat = np.fromiter(ids, dtype, int(side_lengths[keep].sum()))
                    unk[side] += int(np.count_nonzero(flat == UNK))
                    files[side].write(flat.tobytes())
                lengths.append(np.stack([ls[keep], lt[keep]]))
                lines.append(np.flatnonzero(keep) + total + 1)
                total += n
        pair_lengths = np.concatenate(lengths, axis=1) if lengths else np.zeros((2, 0), np.int32)
        pair_lines = np.concatenate(lines) if lines else np.zeros(0, np.int64)
        offsets = np.zeros((2, pair_lengths.shape[1] + 1), dtype=np.int64)
        np.cumsum(pair_lengths, axis=1, out=offsets[:, 1:])
        for side in sides:
            _npy_from_raw(raw[side], folder / f"{side}.npy", dtype)
    finally:
        for path in raw.values():
            path.unlink(missing_ok=True)
    _save(folder / "offsets.npy", offsets)
    _save(folder / "lengths.npy", pair_lengths)
    _save(folder / "lines.npy", pair_lines.astype(np.int64))
    empty = np.setdiff1d(np.arange(1, total + 1), pair_lines, assume_unique=True)
    meta = {
        "format": FORMAT,
        "lines": total,
        "pairs": int(pair_lengths.shape[1]),
        "skipped_empty": int(total - pair_lengths.shape[1]),
        "empty_lines": empty[:SHOW_LINES].tolist(),
        "dtype": dtype.name,
        "vocab_size": subword.vocab_size,
        "src_tokens": int(offsets[0, -1]),
        "tgt_tokens": int(offsets[1, -1]),
        "src_unk": unk["src"],
        "tgt_unk": unk["tgt"],
        "corpus": digests,
        "spm_sha256": hashlib.sha256(subword.to_bytes()).hexdigest(),
        "bytes": {name: (folder / name).stat().st_size for name in ARRAYS},
    }
    write_text_atomic(folder / META, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return meta


def _stat(path: str | Path) -> dict[str, int]:
    st = os.stat(path)
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _npy_from_raw(raw: Path, path: Path, dtype: np.dtype) -> None:
    """A .npy file of the ids written raw to disk chunk by chunk (the count is known only at the end)."""
    count = raw.stat().st_size // dtype.itemsize
    with atomic_path(path) as tmp, open(tmp, "wb") as f, open(raw, "rb") as src:
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (count,)}
        np.lib.format.write_array_header_1_0(f, header)
        shutil.copyfileobj(src, f, 1 << 20)


def _save(path: Path, array: np.ndarray) -> None:
    with atomic_write(path) as f:
        np.save(f, array)


class _Npy:
    """A .npy file read by position with pread: pages it reads stay in the page cache, not in this
    process's RSS (a memory map would map each random read, and the pages around it, into RSS: over an
    epoch of random batches, the whole store)."""

    def __init__(self, path: Path):
        with open(path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(f)
            self.start = f.tell()
        if fortran:
            raise ValueError(f"{path.name} is in Fortran order")
        self.shape, self.dtype = shape, dtype
        self.fd = os.open(path, os.O_RDONLY)

    def read(self, first: int, count: int) -> np.ndarray:
        """count items from item first of the flattened array."""
        size = self.dtype.itemsize
        return np.frombuffer(os.pread(self.fd, count * size, self.start + first * size), self.dtype)

    def __del__(self) -> None:
        if hasattr(self, "fd"):
            os.close(self.fd)


class PairStore(Sequence[Example]):
    """The pairs of a store as Examples, read from its files on demand.

    lengths() gives batching what it needs without reading any pair; select() keeps the pairs that fit
    a run's max_len. Indexing returns fresh Python lists: a batch costs memory, the corpus does not.
    """

    def __init__(self, folder: Path, meta: dict[str, Any]):
        self.folder, self.meta = folder, meta
        try:
            self._ids = [_Npy(folder / f"{side}.npy") for side in ("src", "tgt")]
            self._offsets, self._lines = _Npy(folder / "offsets.npy"), _Npy(folder / "lines.npy")
            self._lengths = np.load(folder / "lengths.npy")  # 8 bytes a pair, all read by batching
        except (OSError, ValueError) as e:
            raise InputError(f"unreadable store file: {e}", str(folder)) from None
        pairs = self._lengths.shape[-1]
        if self._offsets.shape != (2, pairs + 1) or self._lines.shape != (pairs,):
            raise InputError(
                "store files disagree on the number of pairs; run `nmt prepare` again", str(folder)
            )
        self._index: np.ndarray | None = None  # positions of the selected pairs; None: all of them

    def __len__(self) -> int:
        return self._lengths.shape[1] if self._index is None else len(self._index)

    def __getitem__(self, i: int) -> Example:  # type: ignore[override]
        j = int(i if self._index is None else self._index[i])
        pairs = self._lengths.shape[1]
        if not 0 <= j < pairs:
            raise IndexError(i)
        s0, s1 = self._offsets.read(j, 2).tolist()
        t0, t1 = self._offsets.read(pairs + 1 + j, 2).tolist()
        src, tgt = self._ids[0].read(s0, s1 - s0).tolist(), self._ids[1].read(t0, t1 - t0).tolist()
        return Example(src, tgt, int(self._lines.read(j, 1)[0]))

    def lengths(self) -> tuple[np.ndarray, np.ndarray]:
        """Source and target lengths (int64) of the selected pairs, in order."""
        both = self._lengths if self._index is None else self._lengths[:, self._index]
        return both[0].astype(np.int64), both[1].astype(np.int64)

    def select(self, max_len: int) -> tuple[PairStore, LoadReport]:
        """The pairs with no side over max_len subwords, and load_parallel's report about them."""
        if max_len < 1:
            raise ConfigError(f"max_len must be at least 1, got {max_len}")
        fits = (self._lengths <= max_len).all(axis=0)
        view = PairStore.__new__(PairStore)
        view.__dict__.update(self.__dict__)
        view._index = None if fits.all() else np.flatnonzero(fits)
        src, tgt = view.lengths()
        long = np.flatnonzero(~fits)
        m = self.meta
        report = LoadReport(
            total=m["lines"],
            kept=len(view),
            skipped_empty=m["skipped_empty"],
            skipped_long=len(long),
            empty_lines=m["empty_lines"],
            long_lines=[int(self._lines.read(j, 1)[0]) for j in long[:SHOW_LINES].tolist()],
            src_tokens=int(src.sum()),
            tgt_tokens=int(tgt.sum()),
            src_unk=m["src_unk"],  # over every stored pair: counting the kept ones would read them all
            tgt_unk=m["tgt_unk"],
        )
        if not len(view):
            raise InputError(
                f"no usable sentence pairs: {m['skipped_empty']} empty, {len(long)} longer than {max_len} "
                "subwords",
                str(self.folder),
            )
        return view, report


def read_meta(prep_dir: str | Path) -> dict[str, Any]:
    """store.json of a prepared folder: counts, dtype and digests."""
    path = Path(prep_dir) / STORE_DIR / META
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        no_store = f"not a prepared corpus: no {STORE_DIR}/{META} (run `nmt prepare`)"
        raise InputError(no_store, str(prep_dir)) from None
    except (OSError, ValueError) as e:
        raise InputError(f"unreadable store description: {e}", str(path)) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise InputError(f"store format {found!r}, this version reads {FORMAT}", str(path))
    return meta


def open_store(prep_dir: str | Path, subword: Subword | None = None, check_corpus: bool = True) -> PairStore:
    """A prepared store, refused unless its digests match its spm.model, subword and corpus files.

    A corpus file that is gone is only warned about: the store holds everything training needs.
    """
    prep = Path(prep_dir)
    folder, meta = prep / STORE_DIR, read_meta(prep)
    spm_path = prep / "spm.model"
    if not spm_path.exists():
        raise InputError("the store's subword model spm.model is missing", str(spm_path))
    redo = "; run `nmt prepare` again"
    if sha256_file(spm_path) != meta["spm_sha256"]:
        not_it = f"this subword model is not the one the store was encoded with{redo}"
        raise CheckpointError(not_it, str(spm_path))
    if subword is not None and hashlib.sha256(subword.to_bytes()).hexdigest() != meta["spm_sha256"]:
        raise ConfigError(f"the run's subword model differs from the store's ({spm_path})", str(prep))
    for name, size in meta["bytes"].items():
        found = (folder / name).stat().st_size if (folder / name).exists() else None
        if found != size:
            raise InputError(f"store file has {found} bytes, expected {size}{redo}", str(folder / name))
    for side in ("src", "tgt") if check_corpus else ():
        recorded = meta["corpus"][side]
        path = recorded["path"]
        if not Path(path).exists():
            log.warning("%s: the corpus file the store was made from is gone; training from the store", path)
        elif (
            _stat(path) != {k: recorded.get(k) for k in ("bytes", "mtime_ns")}
            and sha256_file(path) != recorded["sha256"]
        ):
            # as git's index: the same size and modification time pass without reading the file
            raise InputError(f"changed since the store was prepared from it{redo}", path)
    return PairStore(folder, meta)


def training_pairs(
    data: DataConfig, subword: Subword, max_len: int
) -> tuple[Sequence[Example], LoadReport, dict[str, Any]]:
    """The training pairs, their report, and what to record about them in checkpoints (store only).

    From data.store when set (nothing is encoded, pairs are read as batches need them), else encoded from
    the text files.
    """
    if not data.store:
        pairs, report = load_parallel(data.train_src, data.train_tgt, subword, max_len)
        return pairs, report, {}
    store, report = open_store(data.store, subword).select(max_len)
    corpus, lines = store.meta["corpus"], store.meta["lines"]
    facts = {
        "store": data.store,
        "train_src": _corpus_facts(data.train_src, corpus["src"], lines),
        "train_tgt": _corpus_facts(data.train_tgt, corpus["tgt"], lines),
        "lines": lines,
    }
    return store, report, facts


def _corpus_facts(named: str, recorded: dict[str, Any], lines: int) -> dict[str, Any]:
    """What a run records of a corpus file (as run_files.file_facts): from the store when the file named
    is the one it was made from (open_store has checked it), else from the file itself, so that a resume
    naming another corpus is refused by its digest."""
    if str(Path(named).resolve()) == recorded["path"]:
        sha, size = recorded["sha256"][:16], recorded.get("bytes")
        return {"path": named, "sha256": sha, "lines": lines, "bytes": size}
    with open(named, "rb") as f:
        count = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    size = Path(named).stat().st_size
    return {"path": named, "sha256": sha256_file(named)[:16], "lines": count, "bytes": size}

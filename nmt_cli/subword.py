"""SentencePiece, which is the vocabulary: one joint model for both languages, fixed special ids."""

from __future__ import annotations

import io
import logging
import random
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import sentencepiece as spm

from nmt_cli.config import SubwordConfig
from nmt_cli.errors import CheckpointError, ConfigError, InputError
from nmt_cli.textio import atomic_write, iter_lines, open_binary
from nmt_cli.vocab import BOS, EOS, PAD, SPECIAL_IDS, UNK  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

# Fixed so that the model, the batches and the search agree without reading the vocabulary.
NUM_THREADS = 2  # the training machines have 2 cores shared with others
MAX_SENTENCES = 1_000_000  # a larger sample barely changes the vocabulary but costs memory and time
SAMPLE_SEED = 1234

_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")
_TOO_LOW = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")


def _sample_lines(paths: Sequence[str | Path], max_sentences: int) -> list[str]:
    """Non-empty lines of all files; a seeded reservoir sample of max_sentences when there are more."""
    rng = random.Random(SAMPLE_SEED)  # own RNG: the sample must not depend on what ran before
    sample: list[str] = []
    seen = 0
    for path in paths:
        with open_binary(path) as f:
            for line in iter_lines(f, str(path)):  # bad UTF-8 reports path:line
                if not line.strip():
                    continue
                seen += 1
                if len(sample) < max_sentences:
                    sample.append(line)
                elif (j := rng.randrange(seen)) < max_sentences:
                    sample[j] = line
    return sample


def _vocab_error(message: str, cfg: SubwordConfig) -> ConfigError:
    """Turn sentencepiece's internal check failures into advice about vocab_size."""
    if m := _TOO_HIGH.search(message):
        return ConfigError(
            f"vocab_size {cfg.vocab_size} is too large for this corpus "
            f"({cfg.model_type}); the maximum is {m.group(2)}"
        )
    if m := _TOO_LOW.search(message):
        return ConfigError(
            f"vocab_size {cfg.vocab_size} is too small: the corpus needs at least {m.group(2)} pieces "
            "(its characters plus 4 special ids); raise vocab_size or lower character_coverage"
        )
    return ConfigError(f"sentencepiece training failed: {message}")


def train_spm(
    paths: Sequence[str | Path],
    cfg: SubwordConfig,
    max_sentences: int = MAX_SENTENCES,
    shrink_to_fit: bool = False,
) -> bytes:
    """Train one joint SentencePiece model on the non-empty lines of all files; return its bytes.

    shrink_to_fit: when vocab_size is more than the corpus allows, use the largest size it allows
    (with a warning) instead of failing; for defaults the user did not choose.
    """
    if max_sentences < 1:
        raise ConfigError(f"max_sentences must be at least 1, got {max_sentences}")
    sentences = _sample_lines(paths, max_sentences)
    if not sentences:
        raise InputError("no non-empty lines to train the subword model on", ", ".join(map(str, paths)))
    spm.set_random_generator_seed(SAMPLE_SEED)
    model = io.BytesIO()  # nothing touches the disk until the caller saves
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            vocab_size=cfg.vocab_size,
            model_type=cfg.model_type,
            character_coverage=cfg.character_coverage,
            pad_id=PAD,
            unk_id=UNK,
            bos_id=BOS,
            eos_id=EOS,
            # Unseen characters become UNK, decoded as '⁇': byte fallback would spend 256 ids of the
            # vocabulary and make small vocabularies impossible.
            byte_fallback=False,
            unk_surface="⁇",  # sentencepiece's default ' ⁇ ' adds spaces that were not in the text
            input_sentence_size=0,  # already sampled above, with a fixed seed
            shuffle_input_sentence=False,
            num_threads=NUM_THREADS,  # fixed, so the model does not depend on the machine
            minloglevel=2,  # errors come back as exceptions; progress logs would flood stderr
        )
    except RuntimeError as e:
        if shrink_to_fit and (m := _TOO_HIGH.search(str(e))):
            log.warning(
                "vocab_size %d is too large for this corpus; using its maximum, %s",
                cfg.vocab_size,
                m.group(2),
            )
            return train_spm(paths, replace(cfg, vocab_size=int(m.group(2))), max_sentences)
        raise _vocab_error(str(e), cfg) from None
    return model.getvalue()


class Subword:
    """A SentencePiece model with the special ids PAD=0, UNK=1, BOS=2, EOS=3."""

    def __init__(self, processor: spm.SentencePieceProcessor):
        self._sp = processor

    @classmethod
    def from_bytes(cls, data: bytes, path: str | None = None) -> Subword:
        """Load serialized model bytes; path only names the source in errors."""
        if not data:
            raise CheckpointError("not a SentencePiece model (empty)", path)
        processor = spm.SentencePieceProcessor()
        try:
            processor.LoadFromSerializedProto(data)
        except RuntimeError:
            raise CheckpointError("not a SentencePiece model", path) from None
        found = (processor.pad_id(), processor.unk_id(), processor.bos_id(), processor.eos_id())
        if found != SPECIAL_IDS:
            raise CheckpointError(
                f"SentencePiece model has special ids pad, unk, bos, eos = {found}, expected {SPECIAL_IDS}",
                path,
            )
        return cls(processor)

    @classmethod
    def from_file(cls, path: str | Path) -> Subword:
        """Load a .model file written by save() or by spm_train with the same special ids."""
        with open_binary(path) as f:
            return cls.from_bytes(f.read(), str(path))

    def to_bytes(self) -> bytes:
        return self._sp.serialized_model_proto()

    def save(self, path: str | Path) -> None:
        """Write the model atomically, so a crash never leaves half a vocabulary."""
        with atomic_write(path) as f:
            f.write(self.to_bytes())

    @property
    def vocab_size(self) -> int:
        return self._sp.vocab_size()

    def encode(self, text: str) -> list[int]:
        """Subword ids of one line, without BOS or EOS."""
        return self._sp.encode(text, out_type=int)

    def encode_batch(self, texts: Sequence[str], num_threads: int = NUM_THREADS) -> list[list[int]]:
        """Subword ids of many lines, encoded in sentencepiece's thread pool."""
        return self._sp.encode(list(texts), out_type=int, num_threads=num_threads)

    def decode(self, ids: Sequence[int]) -> str:
        """Detokenized text; PAD, BOS and EOS are dropped, UNK shows as '⁇'."""
        return self._sp.decode(list(ids))  # PAD, BOS, EOS are control symbols: they decode to nothing

    def pieces(self, text: str) -> list[str]:
        """Subword strings of one line, e.g. ['▁Ein', '▁Hund']."""
        return self._sp.encode(text, out_type=str)

    def id_to_piece(self, ids: Sequence[int]) -> list[str]:
        return [self._sp.id_to_piece(i) for i in ids]

    def decode_pieces(self, pieces: Sequence[str]) -> str:
        return self._sp.decode_pieces(list(pieces))

"""Frozen configuration dataclasses, checked on construction, with exact JSON round trips."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, TypeVar

from nmt_cli.errors import ConfigError

ATTENTION_TYPES = ("none", "bahdanau", "dot", "general", "scaled-dot")  # none: the fixed-vector seq2seq
CELL_TYPES = ("rnn", "lstm", "gru")  # rnn: the simple tanh (Elman) RNN
DECODER_INITS = ("zero", "last", "bridge")  # the decoder's initial state (JoeyNMT's init_hidden)
LOSS_NORMALIZATIONS = ("tokens", "sents")  # what a batch's summed loss is divided by
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "inverse-sqrt", "cosine", "linear", "plateau")
SUBWORD_TYPES = ("unigram", "bpe", "char", "word")
PRECISIONS = ("fp32", "bf16", "fp16")

C = TypeVar("C")


def _choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")


def _at_least(name: str, value: float, low: float) -> None:
    if not value >= low:  # also rejects NaN
        raise ConfigError(f"{name} must be at least {low}, got {value}")


def _fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} must be in [0, 1), got {value}")


@dataclass(frozen=True)
class SubwordConfig:
    vocab_size: int = 8000
    model_type: str = "unigram"
    character_coverage: float = 1.0

    def __post_init__(self) -> None:
        _at_least("vocab_size", self.vocab_size, 8)
        _choice("subword model type", self.model_type, SUBWORD_TYPES)
        if not 0.0 < self.character_coverage <= 1.0:
            raise ConfigError(f"character_coverage must be in (0, 1], got {self.character_coverage}")


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 8000
    emb_size: int = 256
    encoder_hidden: int = 256  # per direction
    encoder_layers: int = 1
    bidirectional: bool = True
    encoder_cell: str = "lstm"
    decoder_hidden: int = 512
    decoder_cell: str = "lstm"
    decoder_layers: int = 1
    attention: str = "general"
    input_feeding: bool = True
    decoder_init: str = "bridge"  # zero; last: the encoder's final states; bridge: tanh(W [those])
    dropout: float = 0.3
    memory_dropout: bool = True  # dropout on the encoder's outputs too (OpenNMT-py has none there)
    tie_embeddings: bool = False  # decoder input embedding = output projection
    share_embeddings: bool = False  # source embedding = target embedding (joint vocabulary)

    def __post_init__(self) -> None:
        _at_least("vocab_size", self.vocab_size, 5)
        for name in ("emb_size", "encoder_hidden", "encoder_layers", "decoder_hidden", "decoder_layers"):
            _at_least(name, getattr(self, name), 1)
        _choice("attention type", self.attention, ATTENTION_TYPES)
        _choice("encoder cell", self.encoder_cell, CELL_TYPES)
        _choice("decoder cell", self.decoder_cell, CELL_TYPES)
        _choice("decoder init", self.decoder_init, DECODER_INITS)
        if self.attention == "none" and self.decoder_init == "zero":
            raise ConfigError(
                "attention none needs decoder_init last or bridge: without attention the decoder sees "
                "the source only through its initial state"
            )
        if self.decoder_init == "last":
            self._check_last()
        _fraction("dropout", self.dropout)
        if self.tie_embeddings and self.emb_size != self.decoder_hidden:
            raise ConfigError(
                "tie_embeddings needs emb_size == decoder_hidden, "
                f"got {self.emb_size} and {self.decoder_hidden}"
            )
        if self.attention in ("dot", "scaled-dot") and self.memory_size != self.decoder_hidden:
            raise ConfigError(
                f"{self.attention} attention needs encoder output size ({self.memory_size}) == "
                f"decoder_hidden ({self.decoder_hidden}); use 'general' or 'bahdanau'"
            )

    def _check_last(self) -> None:
        """decoder_init last hands each encoder layer's final states to the same decoder layer as they are."""
        if self.memory_size != self.decoder_hidden:
            raise ConfigError(
                f"decoder_init last needs the encoder output size ({self.memory_size}: encoder_hidden "
                f"{self.encoder_hidden} x {2 if self.bidirectional else 1} directions) == decoder_hidden "
                f"({self.decoder_hidden}); use decoder_init bridge or zero"
            )
        if self.encoder_layers != self.decoder_layers:
            raise ConfigError(
                f"decoder_init last needs encoder_layers ({self.encoder_layers}) == decoder_layers "
                f"({self.decoder_layers}); use decoder_init bridge or zero"
            )

    @property
    def memory_size(self) -> int:
        return self.encoder_hidden * (2 if self.bidirectional else 1)


def migrate_model_keys(raw: dict[str, Any]) -> dict[str, Any]:
    """ModelConfig keys with the old `bridge` bool (model files, run files, flags) as decoder_init:
    true -> bridge, false -> zero (what it did); a decoder_init given beside it must agree."""
    if "bridge" not in raw:
        return raw
    rest = {k: v for k, v in raw.items() if k != "bridge"}
    bridge, given = raw["bridge"], rest.get("decoder_init")
    if bridge is None:  # a flag not given
        return rest
    if not isinstance(bridge, bool):
        raise ConfigError(f"bridge must be true or false, got {bridge!r}")
    if given is not None and (given == "bridge") != bridge:
        raise ConfigError(f"bridge {str(bridge).lower()} contradicts decoder_init {given}")
    return {**rest, "decoder_init": given if given is not None else "bridge" if bridge else "zero"}


@dataclass(frozen=True)
class TrainConfig:
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_steps: int = 0
    min_lr: float = 0.0  # floor of cosine/linear decay and plateau reduction
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    clip_norm: float = 5.0
    label_smoothing: float = 0.0
    normalization: str = "tokens"  # a batch's summed loss over its target tokens, or its sentences
    batch_tokens: int = 3000  # padded positions per batch on its longer side, source or target + EOS
    max_len: int = 100  # training pairs longer than this (subwords, either side) are skipped
    max_steps: int = 0  # 0: no step limit
    epochs: float = 0.0  # 0: no epoch limit
    time_budget: float = 0.0  # seconds of wall clock from start, 0: none
    valid_every: int = 500
    valid_max_sentences: int = 0  # 0: whole dev set
    log_every: int = 50
    patience: int = 0  # validations without a better dev BLEU before stopping, 0: never
    save_every_minutes: float = 0.0  # extra snapshots ckpt-<minute>.nmt, 0: none
    keep_last: int = 0  # also save step-<N>.nmt at each validation, keep the last k, 0: none
    seed: int = 1234
    threads: int = 0  # 0: leave torch's default
    src_vectors: str = ""  # word vectors (text format, gzip allowed) for the source embedding, "": none
    tgt_vectors: str = ""  # the same for the target embedding
    freeze_embeddings: bool = False  # embeddings that got vectors are not trained
    precision: str = "fp32"  # fp32, or bf16/fp16 autocast with fp32 master weights

    def __post_init__(self) -> None:
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("precision", self.precision, PRECISIONS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("loss normalization", self.normalization, LOSS_NORMALIZATIONS)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        _fraction("label_smoothing", self.label_smoothing)
        for name in (
            "warmup_steps",
            "max_steps",
            "epochs",
            "time_budget",
            "weight_decay",
            "clip_norm",
            "patience",
            "keep_last",
            "save_every_minutes",
            "valid_max_sentences",
            "threads",
        ):
            _at_least(name, getattr(self, name), 0)
        for name in ("batch_tokens", "max_len", "valid_every", "log_every"):
            _at_least(name, getattr(self, name), 1)
        if not 0.0 < self.plateau_factor < 1.0:
            raise ConfigError(f"plateau_factor must be in (0, 1), got {self.plateau_factor}")
        _at_least("plateau_patience", self.plateau_patience, 1)
        _at_least("min_lr", self.min_lr, 0.0)
        if not math.isfinite(self.min_lr):
            raise ConfigError(f"min_lr must be a finite number, got {self.min_lr}")
        if self.freeze_embeddings and not (self.src_vectors or self.tgt_vectors):
            raise ConfigError("freeze_embeddings needs src_vectors or tgt_vectors")


# TrainConfig fields a resumed run may change: they decide when to stop and what is reported or kept,
# not which batches are drawn or what an update computes. Any other difference is refused.
LIMITS = ("max_steps", "epochs", "time_budget")
RESUMABLE = (*LIMITS, "patience", "log_every", "keep_last", "save_every_minutes", "threads")


def resume_differences(saved: dict[str, Any], now: TrainConfig) -> list[tuple[str, Any, Any]]:
    """(field, saved value, new value) for each difference a resume must refuse.

    cosine and linear decay over the run's limits, so with them the limits must stay too.
    """
    free = set(RESUMABLE) - (set(LIMITS) if now.schedule in ("cosine", "linear") else set())
    defaults = TrainConfig()
    return [
        (f.name, saved.get(f.name, getattr(defaults, f.name)), getattr(now, f.name))
        for f in fields(TrainConfig)
        if f.name not in free and saved.get(f.name, getattr(defaults, f.name)) != getattr(now, f.name)
    ]


@dataclass(frozen=True)
class DecodeConfig:
    beam_size: int = 5
    length_penalty: float = 1.0  # alpha in score / len**alpha
    length_penalty_type: str = "average"  # average: len**alpha, gnmt: ((5 + len) / 6)**alpha
    max_len_a: float = 1.5  # cap = a * src_len + b, per sentence
    max_len_b: int = 10
    n_best: int = 1
    ban_unk: bool = False
    shortlist: int = 0  # target pieces per source piece from the model's lexical table; 0: full vocabulary

    def __post_init__(self) -> None:
        _at_least("beam_size", self.beam_size, 1)
        _at_least("shortlist", self.shortlist, 0)
        _at_least("n_best", self.n_best, 1)
        if self.n_best > self.beam_size:
            raise ConfigError(f"n_best ({self.n_best}) cannot exceed beam_size ({self.beam_size})")
        _at_least("length_penalty", self.length_penalty, 0.0)
        _choice("length penalty type", self.length_penalty_type, ("average", "gnmt"))
        _at_least("max_len_a", self.max_len_a, 0.0)
        if not math.isfinite(self.max_len_a):
            raise ConfigError(f"max_len_a must be a finite number, got {self.max_len_a}")
        _at_least("max_len_b", self.max_len_b, 1)


def from_dict(cls: type[C], raw: dict[str, Any]) -> C:
    """Build cls from a dict, refusing unknown keys by listing the valid ones."""
    if cls is ModelConfig:
        raw = migrate_model_keys(raw)
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    if unknown := sorted(raw.keys() - set(names)):
        raise ConfigError(f"unknown {cls.__name__} keys {unknown}; valid: {', '.join(names)}")
    cleaned = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    return cls(**cleaned)


def to_json(config: Any) -> str:
    return json.dumps(asdict(config), sort_keys=True)


def from_json(cls: type[C], text: str) -> C:
    return from_dict(cls, json.loads(text))


def with_overrides(config: C, overrides: dict[str, Any]) -> C:
    """A copy of config with the given fields replaced; None values are ignored."""
    given = {k: v for k, v in overrides.items() if v is not None}
    names = {f.name for f in fields(config)}  # type: ignore[arg-type]
    if unknown := sorted(given.keys() - names):
        raise ConfigError(
            f"unknown {type(config).__name__} keys {unknown}; valid: {', '.join(sorted(names))}"
        )
    return replace(config, **given)  # type: ignore[type-var]


@dataclass(frozen=True)
class DataConfig:
    """Where the parallel training and dev corpora are."""

    train_src: str
    train_tgt: str
    dev_src: str = ""
    dev_tgt: str = ""
    store: str = ""  # a prepared folder (`nmt prepare`): train from its store; train_src/tgt name the corpus

    def __post_init__(self) -> None:
        if bool(self.dev_src) != bool(self.dev_tgt):
            raise ConfigError("give both --dev-src and --dev-tgt, or neither")


# Named recipes: field overrides for (ModelConfig, TrainConfig). base-rnn is the side-by-side protocol
# model of BENCHMARKS-PEERS.md, as OpenNMT-py 3.5.1 trains it from that config; toy is sized to learn the
# embedded corpus in data/ quickly (make demo).
PRESETS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "base-rnn": (
        dict(
            emb_size=256,
            encoder_hidden=256,
            decoder_hidden=512,
            attention="general",
            input_feeding=True,
            decoder_init="last",  # OpenNMT-py with its bridge off
            dropout=0.3,
            memory_dropout=False,
        ),
        dict(
            optimizer="adam",
            lr=1e-3,
            clip_norm=5.0,
            normalization="sents",  # OpenNMT-py's default: the clip applies to the per-sentence gradient
            batch_tokens=3000,
            schedule="constant",
        ),
    ),
    "cpu-15min": (
        dict(
            emb_size=256,
            encoder_hidden=256,
            decoder_hidden=512,
            attention="general",
            input_feeding=False,
            decoder_init="bridge",
            dropout=0.2,
        ),
        dict(
            optimizer="adam",
            lr=2e-3,
            schedule="inverse-sqrt",
            warmup_steps=150,
            label_smoothing=0.1,
            clip_norm=5.0,
            batch_tokens=3350,  # ~2,970 real target tokens on Multi30k de-en, as 3,000 target positions gave
            time_budget=900.0,
            valid_every=200,
        ),
    ),
    "toy": (
        dict(
            emb_size=128,
            encoder_hidden=128,
            decoder_hidden=256,
            attention="general",
            input_feeding=False,
            decoder_init="bridge",
            dropout=0.1,
        ),
        dict(
            optimizer="adam",
            lr=3e-3,
            schedule="inverse-sqrt",
            warmup_steps=100,
            label_smoothing=0.1,
            batch_tokens=2100,  # ~1,970 real target tokens on data/, as 2,000 target positions gave
            valid_every=200,
            valid_max_sentences=200,
        ),
    ),
    "tiny": (
        dict(emb_size=32, encoder_hidden=32, decoder_hidden=64, dropout=0.0),
        dict(lr=3e-3, batch_tokens=500, valid_every=50, log_every=10),
    ),
}


def preset(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    model, train = PRESETS[name]
    return dict(model), dict(train)

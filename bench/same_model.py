"""Is nmt's base-rnn OpenNMT-py's protocol model? The same weights, sentences and updates in both.

Run by bench/same_model.sh, in two interpreters. `onmt` (OpenNMT-py's venv) loads one of its checkpoints,
takes the summed token cross-entropy of the first LINES dev pairs and its gradient with dropout off, then
makes UPDATES updates with OpenNMT-py's own optimizer (Adam, clip 5, loss over sentences), each on the
next LINES pairs, and saves all of it as plain tensors. `nmt` (this checkout's venv) copies those weights
into nmt's base-rnn (embedding and output rows matched by piece), does the same with nmt's train_step and
prints, per weight, how far apart the two are. Outside `make test`: it needs a bench/peers.sh run.

bench/same_start.sh uses four more: `onmt-init` (OpenNMT-py's initial weights for a seed, as onmt_train
draws them), `onmt-batches` (the corpus lines of its first N training batches, as its own run makes
them), `onmt-perplexity` (a checkpoint's perplexity on piece files, by forced decoding) and `nmt-train`
(`nmt train` started from those weights, on those batches, or both).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

SPECIALS = {"<blank>": 0, "<unk>": 1, "<s>": 2, "</s>": 3}  # OpenNMT-py's names for nmt_cli.vocab's ids


def _lines(path: str, start: int, count: int) -> list[str]:
    return Path(path).read_text(encoding="utf-8").splitlines()[start : start + count]


# --- OpenNMT-py's side ------------------------------------------------------------------------------------


def _onmt_model(checkpoint: str):  # noqa: ANN202 - OpenNMT-py's types
    """-> the checkpoint, its vocabularies and its model, in eval mode (dropout off; autograd stays on)."""
    from onmt.inputters.inputter import dict_to_vocabs
    from onmt.model_builder import build_base_model

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)  # its own pickled format
    vocabs = dict_to_vocabs(ckpt["vocab"])
    model = build_base_model(ckpt["opt"], vocabs)
    model.load_state_dict({"model": dict(ckpt["model"]), "generator": dict(ckpt["generator"])})
    return ckpt, vocabs, model.eval()


def _onmt_loss(model, vocabs, src: str, tgt: str, start: int, lines: int) -> tuple[torch.Tensor, int]:  # noqa: ANN001
    """Summed token cross-entropy (EOS included) of lines start.. of the piece files, and the token count."""
    pad = vocabs["tgt"]["<blank>"]
    srcs = [vocabs["src"](line.split()) for line in _lines(src, start, lines)]
    tgts = [vocabs["tgt"](["<s>", *line.split(), "</s>"]) for line in _lines(tgt, start, lines)]
    s = torch.full((len(srcs), max(map(len, srcs)), 1), vocabs["src"]["<blank>"])
    t = torch.full((len(tgts), max(map(len, tgts)), 1), pad)
    for i, (a, b) in enumerate(zip(srcs, tgts, strict=True)):
        s[i, : len(a), 0], t[i, : len(b), 0] = torch.tensor(a), torch.tensor(b)
    dec_out, _ = model(s, t, torch.tensor([len(a) for a in srcs]))
    logits = model.generator(dec_out).flatten(0, 1)
    gold = t[:, 1:, 0].flatten()
    loss = torch.nn.functional.cross_entropy(logits, gold, ignore_index=pad, reduction="sum")
    return loss, int((gold != pad).sum())


def onmt_side(checkpoint: str, src: str, tgt: str, out: str, lines: int, updates: int) -> None:
    """src, tgt: piece files, as bench/peers.sh writes them for OpenNMT-py."""
    from onmt.utils.optimizers import Optimizer

    ckpt, vocabs, model = _onmt_model(checkpoint)
    saved = {"w." + n: p.detach().clone() for n, p in model.named_parameters()}

    def loss_of(start: int) -> torch.Tensor:
        return _onmt_loss(model, vocabs, src, tgt, start, lines)[0]

    loss = loss_of(0)
    loss.backward()
    saved |= {"g." + n: p.grad.clone() for n, p in model.named_parameters()}
    saved["loss"] = loss.detach()
    saved["itos.src"] = list(vocabs["src"].ids_to_tokens)
    saved["itos.tgt"] = list(vocabs["tgt"].ids_to_tokens)
    opt = ckpt["opt"]
    opt.train_from, opt.reset_optim = "", "all"
    optim = Optimizer.from_opt(model, opt, checkpoint=None)
    losses = []
    for k in range(updates):
        optim.zero_grad()
        loss = loss_of(k * lines)
        optim.backward(loss / lines)  # normalization "sents", OpenNMT-py's default
        optim.step()
        losses.append(loss.item())
    saved |= {"a." + n: p.detach().clone() for n, p in model.named_parameters()}
    saved["update_losses"] = torch.tensor(losses)
    torch.save(saved, out)


# --- nmt's side -------------------------------------------------------------------------------------------

# nmt's parameter -> OpenNMT-py's, and whether it is stored transposed there (general attention's W_a
# multiplies the query in OpenNMT-py and the keys in nmt: h_t . W_a h_s either way)
NAMES = {
    "encoder.embedding.weight": ("encoder.embeddings.make_embedding.emb_luts.0.weight", False),
    "tgt_embedding.weight": ("decoder.embeddings.make_embedding.emb_luts.0.weight", False),
    "decoder_rnn.weight_ih_l0": ("decoder.rnn.layers.0.weight_ih", False),
    "decoder_rnn.weight_hh_l0": ("decoder.rnn.layers.0.weight_hh", False),
    "decoder_rnn.bias_ih_l0": ("decoder.rnn.layers.0.bias_ih", False),
    "decoder_rnn.bias_hh_l0": ("decoder.rnn.layers.0.bias_hh", False),
    "attention.key_proj.weight": ("decoder.attn.linear_in.weight", True),
    "combine.weight": ("decoder.attn.linear_out.weight", False),
    "generator.weight": ("generator.weight", False),
    "generator.bias": ("generator.bias", False),
} | {
    f"encoder.layers.0.{d}.{w}": (f"encoder.rnn.{w}{suffix}", False)
    for d, suffix in ((0, ""), (1, "_reverse"))
    for w in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
}
VOCAB_ROWS = {
    "encoder.embedding.weight": "src",
    "tgt_embedding.weight": "tgt",
    "generator.weight": "tgt",
    "generator.bias": "tgt",
}


def _rows(ref: dict, pieces: list[str]) -> dict[str, torch.Tensor]:
    """Per side, OpenNMT-py's vocabulary row of each of nmt's pieces (-1 where it has none)."""
    names = {v: k for k, v in SPECIALS.items()}
    rows = {}
    for side in ("src", "tgt"):
        stoi = {p: i for i, p in enumerate(ref[f"itos.{side}"])}
        rows[side] = torch.tensor([stoi.get(names.get(i, p), -1) for i, p in enumerate(pieces)])
    return rows


def _theirs(ref: dict, rows: dict[str, torch.Tensor], prefix: str, name: str) -> torch.Tensor:
    """OpenNMT-py's tensor (prefix w. weights, g. gradients, a. after the updates) for nmt's parameter."""
    other, transposed = NAMES[name]
    w = ref[prefix + other]
    w = w.t() if transposed else w
    if name in VOCAB_ROWS:  # rows by piece; a piece OpenNMT-py never saw gets zeros, and as an output
        r = rows[VOCAB_ROWS[name]]  # a bias that keeps it out of the softmax's sum
        out = w.new_full((len(r), *w.shape[1:]), -1e4 if name == "generator.bias" and prefix != "g." else 0.0)
        out[r >= 0] = w[r[r >= 0]]
        return out
    return w


def _load(model: torch.nn.Module, ref: dict, rows: dict[str, torch.Tensor], prefix: str = "w.") -> None:
    params = dict(model.named_parameters())
    assert set(params) == set(NAMES), set(params) ^ set(NAMES)
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(_theirs(ref, rows, prefix, name))


def nmt_side(reference: str, model_file: str, src: str, tgt: str, lines: int) -> None:
    """model_file: any nmt base-rnn model of that run (for its config and SentencePiece model); src, tgt
    the raw dev text of the piece files the other side read."""
    from nmt_cli.checkpoint import load_model
    from nmt_cli.config import TrainConfig, preset, with_overrides
    from nmt_cli.data import Example, collate
    from nmt_cli.loss import token_loss
    from nmt_cli.update import build_optimizer, train_step

    ref = torch.load(reference, weights_only=True)
    loaded = load_model(model_file, mapped=False)
    model, sub = loaded.model, loaded.subword
    rows = _rows(ref, sub.id_to_piece(range(sub.vocab_size)))
    unmatched = int((rows["tgt"] < 0).sum())

    def theirs(prefix: str, name: str) -> torch.Tensor:
        return _theirs(ref, rows, prefix, name)

    params = dict(model.named_parameters())

    def load(prefix: str) -> None:
        _load(model, ref, rows, prefix)

    def batch(start: int):  # noqa: ANN202
        pairs = zip(_lines(src, start, lines), _lines(tgt, start, lines), strict=True)
        return collate([Example(sub.encode(s), sub.encode(t), i + 1) for i, (s, t) in enumerate(pairs)])

    for module in model.modules():  # dropout off, in training mode (the CPU path's training kernels run)
        if hasattr(module, "p"):
            module.p = 0.0
    model.train()
    load("w.")
    model.zero_grad()
    loss = token_loss(model, batch(0))
    loss.backward()
    print(f"pieces OpenNMT-py's vocabulary lacks: {unmatched}")
    print(f"loss of the first {lines} dev pairs: nmt {loss.item():.4f}, OpenNMT-py {ref['loss'].item():.4f}")
    print("weight                           |grad| nmt   OpenNMT-py   |diff|/|grad|")
    for name, p in params.items():
        g, g_ref = p.grad, theirs("g.", name)
        print(f"{name:32s} {g.norm():10.4f} {g_ref.norm():12.4f} {(g - g_ref).norm() / g_ref.norm():12.2e}")

    load("w.")
    cfg = with_overrides(TrainConfig(), preset("base-rnn")[1])
    optimizer = build_optimizer(model, cfg)
    losses = []
    for k in range(len(ref["update_losses"])):
        b = batch(k * lines)
        losses.append(train_step(model, optimizer, b, cfg, cfg.lr) * b.n_tokens)
    print(f"losses of {len(losses)} updates: nmt {[round(x, 3) for x in losses]}")
    print(f"                   OpenNMT-py {[round(x, 3) for x in ref['update_losses'].tolist()]}")
    print("weight                           moved        |nmt - OpenNMT-py| / moved")
    for name, p in params.items():
        before, after = theirs("w.", name), theirs("a.", name)
        moved = (after - before).norm()
        print(f"{name:32s} {moved:10.4f} {(p.detach() - after).norm() / moved:12.2e}")


@torch.no_grad()
def onmt_perplexity(checkpoint: str, src: str, tgt: str) -> None:
    """Prints the perplexity of a checkpoint on whole piece files: forced decoding, 100 lines at a time, as
    `nmt score` measures nmt's models."""
    _, vocabs, model = _onmt_model(checkpoint)
    total, tokens, count = 0.0, 0, len(_lines(src, 0, 10**9))
    for start in range(0, count, 100):
        loss, n = _onmt_loss(model, vocabs, src, tgt, start, 100)
        total, tokens = total + loss.item(), tokens + n
    print(f"{math.exp(total / tokens):.2f}")


def onmt_init(checkpoint: str, seed: int, out: str) -> None:
    """OpenNMT-py's initial weights for seed, drawn as onmt_train does (set_random_seed, build_model), saved
    in checkpoint form (with checkpoint's vocabulary and options) for onmt_side."""
    from onmt.inputters.inputter import dict_to_vocabs
    from onmt.model_builder import build_model
    from onmt.utils.misc import set_random_seed

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    opt = ckpt["opt"]
    opt.update_vocab = False
    set_random_seed(seed, False)
    state = build_model(opt, opt, dict_to_vocabs(ckpt["vocab"]), None, -1).state_dict()
    model = {k: v for k, v in state.items() if not k.startswith("generator.")}
    generator = {k.removeprefix("generator."): v for k, v in state.items() if k.startswith("generator.")}
    torch.save({"model": model, "generator": generator, "vocab": ckpt["vocab"], "opt": opt}, out)


def onmt_batches(config: str, count: int, out: str) -> None:
    """The 1-based corpus lines of the first count training batches of `onmt_train -config config`: its
    own iterator, seeded as it seeds it, with the updates themselves left out."""
    import json

    import onmt.trainer
    from onmt.bin.train import main

    batches: list[list[int]] = []

    def record(self, true_batches, *_: object) -> None:  # noqa: ANN001 - Trainer._gradient_accumulation
        batches.extend([int(i) + 1 for i in b["cid_line_number"]] for b in true_batches)
        if len(batches) >= count:
            Path(out).write_text(json.dumps(batches[:count]))
            raise SystemExit(0)

    onmt.trainer.Trainer._gradient_accumulation = record
    sys.argv = ["onmt_train", "-config", config, "-train_steps", str(10 * count), "-valid_steps", "100000000"]
    sys.argv += ["-report_every", "100000000", "-save_checkpoint_steps", "100000000", "-num_workers", "0"]
    main()


def nmt_train(weights: str, batches: str, argv: list[str]) -> None:
    """`nmt train ARGV`, its model starting from weights (an onmt_side output of onmt-init's file; "-": nmt's
    own draw) and its first epoch being batches (an onmt-batches file; "-": nmt's own)."""
    import json

    import numpy as np

    from nmt_cli import train
    from nmt_cli.cli import main

    if weights != "-":
        ref = torch.load(weights, weights_only=True)
        build = train.build_model

        def build_model(cfg):  # noqa: ANN001, ANN202 - as train.build_model, then OpenNMT-py's weights
            model = build(cfg)
            _load(model, ref, _rows(ref, pieces))
            return model

        train.build_model = build_model
    if batches != "-":
        lines = json.loads(Path(batches).read_text())
        own = train.token_batches

        def token_batches(examples, batch_tokens, seed, epoch, *rest):  # noqa: ANN001, ANN202 - as train's
            if epoch:  # after the first epoch: nmt's own
                return own(examples, batch_tokens, seed, epoch, *rest)
            index = {examples[i].line: i for i in range(len(examples))}
            return [np.array([index[line] for line in b], dtype=np.int64) for b in lines]

        train.token_batches = token_batches
    from nmt_cli.subword import Subword

    data = Path(
        argv[argv.index("--data") + 1]
    )  # a prepared directory: its SentencePiece model names the rows
    sub = Subword.from_bytes((data / "spm.model").read_bytes())
    pieces = sub.id_to_piece(range(sub.vocab_size))
    sys.argv = ["nmt", "train", *argv]
    main()


if __name__ == "__main__":
    side, *args = sys.argv[1:]
    if side == "onmt":
        onmt_side(args[0], args[1], args[2], args[3], int(args[4]), int(args[5]))
    elif side == "onmt-perplexity":
        onmt_perplexity(args[0], args[1], args[2])
    elif side == "onmt-init":
        onmt_init(args[0], int(args[1]), args[2])
    elif side == "onmt-batches":
        onmt_batches(args[0], int(args[1]), args[2])
    elif side == "nmt-train":
        nmt_train(args[0], args[1], args[2:])
    else:
        nmt_side(args[0], args[1], args[2], args[3], int(args[4]))

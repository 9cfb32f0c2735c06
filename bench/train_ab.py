"""Training speed of model.py at earlier commits against the working tree, interleaved in one process.

Usage: python bench/train_ab.py [--steps N] [--input-feeding 0|1] REV [REV ...]
Each REV's nmt_cli/model.py (and cell.py when it has one) is loaded as its own module; every variant
trains its own copy of base-rnn on the same Multi30k batches, in rotating order, so machine noise hits
all of them alike. Prints steady tokens/s per variant and the ratio to the first REV. Only the model
code differs between variants: the loss is the same whole-batch cross-entropy for all.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from nmt_cli.config import ModelConfig
from nmt_cli.data import collate, load_parallel, token_batches
from nmt_cli.subword import Subword


def model_module(rev: str, tmp: Path) -> types.ModuleType:
    """nmt_cli.model as of REV ('.' is the working tree), importable beside the current package."""
    if rev == ".":
        import nmt_cli.model

        return nmt_cli.model
    pkg = tmp / f"rev_{rev}"
    pkg.mkdir()
    for name in ("model.py", "cell.py", "attention.py"):
        shown = subprocess.run(["git", "show", f"{rev}:nmt_cli/{name}"], capture_output=True, text=True)
        if shown.returncode == 0:
            text = shown.stdout.replace("from nmt_cli.cell", f"from rev_{rev}.cell")
            (pkg / name).write_text(text.replace("from nmt_cli.attention", f"from rev_{rev}.attention"))
    (pkg / "__init__.py").write_text("")
    sys.path.insert(0, str(tmp))
    spec = importlib.util.spec_from_file_location(f"rev_{rev}.model", pkg / "model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("revs", nargs="+")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--skip", type=int, default=4)
    parser.add_argument("--input-feeding", type=int, default=1)
    args = parser.parse_args()
    data = Path(os.environ.get("NMT_DATA", "../shared/data/multi30k"))
    sub = Subword.from_file(os.environ.get("NMT_SPM", "runs/m30k/spm.model"))
    examples, _ = load_parallel(data / "train.de", data / "train.en", sub, 100)
    batches = token_batches(examples, 2700, 1234, 0)[: args.steps]
    cfg = ModelConfig(vocab_size=sub.vocab_size, bridge=False, input_feeding=bool(args.input_feeding))
    with tempfile.TemporaryDirectory() as tmp:
        variants = {}
        for rev in args.revs:
            torch.manual_seed(1)
            model = model_module(rev, Path(tmp)).build_model(cfg)
            variants[rev] = (model, torch.optim.Adam(model.parameters(), 1e-3), [0, 0.0])
        for i, indices in enumerate(batches):
            batch = collate([examples[j] for j in indices])
            order = args.revs[i % len(args.revs) :] + args.revs[: i % len(args.revs)]
            for rev in order:
                model, opt, stats = variants[rev]
                began = time.perf_counter()
                hidden = model.teacher_force(batch.src, batch.src_lengths, batch.tgt_in).hidden
                real = batch.tgt_out != 0
                loss = F.cross_entropy(model.generator(hidden[real]), batch.tgt_out[real], reduction="sum")
                opt.zero_grad()
                (loss / batch.n_tokens).backward()
                opt.step()
                if i >= args.skip:
                    stats[0] += batch.n_tokens
                    stats[1] += time.perf_counter() - began
    base = variants[args.revs[0]][2]
    for rev, (_, _, (tokens, seconds)) in variants.items():
        print(f"{rev}\t{tokens / seconds:.0f} tok/s\t{base[1] / seconds:.2f}x")


if __name__ == "__main__":
    main()

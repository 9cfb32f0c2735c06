"""Run under torchrun by tests/test_distributed.py: a few DDP updates, then each rank's weights to a file.

Usage: python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_worker.py OUT_DIR [plain]
The updates are those of train._loop: batches sharded by rank from one seeded order, the update's token
count summed over ranks, train_step under DistributedDataParallel.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from nmt_cli import distributed
from nmt_cli.config import ModelConfig, TrainConfig
from nmt_cli.data import Example, collate, token_batches
from nmt_cli.update import Place, build_optimizer, place_model, train_step

STEPS = 4


def examples() -> list[Example]:
    """40 random pairs over a 30-piece vocabulary, the same in every process."""
    gen = torch.Generator().manual_seed(7)
    out = []
    for n in range(40):
        s, t = (int(x) for x in torch.randint(2, 9, (2,), generator=gen))
        src = torch.randint(4, 30, (s,), generator=gen).tolist()
        tgt = torch.randint(4, 30, (t,), generator=gen).tolist()
        out.append(Example(src, tgt, n + 1))
    return out


def configs(input_feeding: bool) -> tuple[ModelConfig, TrainConfig]:
    model = ModelConfig(
        vocab_size=30,
        emb_size=16,
        encoder_hidden=16,
        decoder_hidden=32,
        dropout=0.0,
        input_feeding=input_feeding,
    )
    return model, TrainConfig(lr=0.01, batch_tokens=60, clip_norm=1.0, label_smoothing=0.1)


def main() -> None:
    out = Path(sys.argv[1])
    input_feeding = "feeding" in sys.argv[2:]
    model_cfg, cfg = configs(input_feeding)
    device = torch.device("cpu")
    world = distributed.start(distributed.from_env(), device)
    torch.manual_seed(0)
    model, kernels, engine = place_model(model_cfg, cfg, Place(device, world))
    optimizer = build_optimizer(model, cfg)
    data = examples()
    batches = token_batches(
        data, cfg.batch_tokens // world.world_size, cfg.seed, 0, world.rank, world.world_size
    )
    for step in range(STEPS):
        batch = collate([data[i] for i in batches[step]])
        n_tokens = distributed.total(world, batch.n_tokens, device)
        train_step(model, optimizer, batch, cfg, cfg.lr, engine, n_tokens)
    torch.save(
        {"kernels": kernels, "state": model.state_dict(), "batches": [b.tolist() for b in batches[:STEPS]]},
        out / f"rank{world.rank}.pt",
    )
    distributed.stop(world)
    assert os.environ["WORLD_SIZE"] == "2"


if __name__ == "__main__":
    main()

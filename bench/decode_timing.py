"""Decode-only sentences/s of the code on PYTHONPATH: decode_ids over test_2016_flickr, model loaded.

    python bench/decode_timing.py MODEL [--beam 1] [--int8] [--shortlist K] [--repeats 2]

As `nmt translate` runs it (sleeping idle threads, the decoding kernel cache, worker threads per
OMP_NUM_THREADS), without reading, writing or start-up: 128 lines to warm up, then the 1,000 lines
`--repeats` times; prints the median and the best rate. bench/decode_ab.sh runs it for several
revisions in turn.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import nmt_cli  # noqa: E402

# the layout of the revision on PYTHONPATH (the working tree's editable install would also answer for
# nmt_cli.cpu, so look for the folder): set the process up as that revision's translate did
if (Path(nmt_cli.__file__).parent / "cpu").is_dir():
    from nmt_cli.cpu.process import settings_for_decoding

    settings_for_decoding()
else:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from nmt_cli import gemm
    from nmt_cli.cmd_translate import _one_malloc_arena

    _one_malloc_arena()
    gemm.set_cache_capacity(gemm.DECODING_CACHE)

from nmt_cli.checkpoint import load_model  # noqa: E402
from nmt_cli.config import DecodeConfig  # noqa: E402
from nmt_cli.decode import decode_ids  # noqa: E402
from nmt_cli.translate import for_decoding, shortlist_setting  # noqa: E402

DATA = Path(os.environ.get("NMT_DATA", "../shared/data/multi30k"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--beam", type=int, default=1)
    parser.add_argument("--int8", action="store_true")
    parser.add_argument("--shortlist", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    loaded = for_decoding(load_model(args.model), args.int8)
    cfg = DecodeConfig(beam_size=args.beam, shortlist=args.shortlist)
    lines = (DATA / "test_2016_flickr.de").read_text().splitlines()
    ids = [loaded.subword.encode(line) for line in lines]
    shortlist = shortlist_setting(loaded, cfg)
    decode_ids(loaded.model, ids[:128], cfg, 64, shortlist)
    rates = []
    for _ in range(args.repeats):
        began = time.perf_counter()
        decode_ids(loaded.model, ids, cfg, 64, shortlist)
        rates.append(len(ids) / (time.perf_counter() - began))
    print(f"{statistics.median(rates):.1f} {max(rates):.1f}")


if __name__ == "__main__":
    main()

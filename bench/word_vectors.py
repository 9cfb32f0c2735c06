"""Train word2vec vectors on a plain-text corpus and write them in the text format `nmt train` reads.

Usage: python bench/word_vectors.py CORPUS -o OUT [--dim 256] [--epochs 10] [--min-count 1] [--seed 1]
Needs gensim (`pip install gensim`), which only this script uses. Words are runs of letters and digits
or single punctuation marks, as SentencePiece pieces tend to split them, so '▁Hund' and ',' find 'Hund'
and ','. OUT gets a 'count dim' header; a name ending in .gz is written gzip-compressed.
"""

from __future__ import annotations

import argparse
import gzip
import re
import sys
import time
from pathlib import Path

WORD = re.compile(r"\w+|[^\w\s]")


def sentences(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8") as f:
        return [WORD.findall(line) for line in f]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("corpus", type=Path)
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--min-count", type=int, default=1)
    ap.add_argument("--window", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--digits", type=int, default=5, help="Significant digits per value.")
    args = ap.parse_args()

    from gensim.models import Word2Vec

    began = time.time()
    text = sentences(args.corpus)
    model = Word2Vec(
        text,
        vector_size=args.dim,
        window=args.window,
        min_count=args.min_count,
        sg=1,  # skip-gram: better rare-word vectors than CBOW on a corpus this small
        epochs=args.epochs,
        seed=args.seed,
        workers=1,  # one worker thread makes the vectors a function of the seed alone
    )
    wv = model.wv
    opener = gzip.open if args.out.suffix == ".gz" else open
    with opener(args.out, "wt", encoding="utf-8") as f:
        f.write(f"{len(wv.index_to_key)} {args.dim}\n")
        for word in wv.index_to_key:
            f.write(word + " " + " ".join(f"{v:.{args.digits}g}" for v in wv[word]) + "\n")
    print(
        f"{len(wv.index_to_key)} vectors of {args.dim} from {sum(map(len, text))} words of {args.corpus} "
        f"in {time.time() - began:.1f} s -> {args.out}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()

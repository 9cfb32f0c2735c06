"""`python -m nmt_cli` (also what `torchrun -m nmt_cli` runs)."""

from nmt_cli.cli import main

main()

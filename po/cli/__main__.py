"""`python -m po.cli` (and `torchrun -m po.cli`, `deepspeed --module po.cli`): the same program as `po-train`."""

from po.cli.train import main

main()

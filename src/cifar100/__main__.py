"""`python -m cifar100` (and `torchrun -m cifar100`) runs the CLI."""

from cifar100.cli import main

raise SystemExit(main())

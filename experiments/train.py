"""Train a policy on the games with GRPO: `python experiments/train.py --help` (the same as `g1jax train`)."""

import sys

from g1jax.cli.train import main

if __name__ == "__main__":
    sys.exit(main())

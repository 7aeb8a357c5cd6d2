"""The evaluation command (g1jax/cli/evaluate.py; docs/eval.md): `python experiments/eval.py --help`."""

import sys

from g1jax.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())

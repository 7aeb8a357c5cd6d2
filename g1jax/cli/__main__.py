"""`python -m g1jax.cli COMMAND ...`, the same as the installed `g1jax` command."""

import sys

from g1jax.cli import main

sys.exit(main())

"""`python -m twlv_jax` is the `twlv` command."""

import sys

from twlv_jax.cli import main

sys.exit(main())

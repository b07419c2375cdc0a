"""`python -m hf_smoe.cli`: the `smoe` command, for launchers that run modules (torchrun, accelerate launch)."""

import sys

from .main import main

sys.exit(main())

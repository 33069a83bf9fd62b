"""`python -m icl_eval` (and `accelerate launch -m icl_eval`) runs the CLI."""

import sys

from icl_eval.cli import main

sys.exit(main())

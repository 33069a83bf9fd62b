"""`python -m icl_eval` (and `accelerate launch -m icl_eval`) runs the CLI."""

from icl_eval.cli import entry

entry()

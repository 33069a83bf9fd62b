"""icl-eval: zero-, one- and few-shot evaluation of causal language models."""

from icl_eval.media_packages import hide_mismatched as _hide_mismatched

__version__ = "0.1.0"

_hide_mismatched()  # before anything imports transformers: see media_packages.py

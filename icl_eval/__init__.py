"""icl-eval: zero-, one- and few-shot evaluation of causal language models."""

__version__ = "0.1.0"

"""Tiny randomly initialised causal LMs and a tokenizer built on the spot: for the demo and the tests.

Their scores mean nothing; they exist to exercise the harness end to end without downloading anything.
"""

from __future__ import annotations

from pathlib import Path

import torch

_TRAINING_TEXT = [
    "Q: What is 98 plus 45? A: 143", "Q: What is 17 minus 14? A: 3", "Q: What is 95 times 45? A: 4275",
    "Q: What is (9 + 8) * 2? A: 34", "Please unscramble the letters into a word, and write that word:",
    "The quick brown fox jumps over the lazy dog. She held the torch in front of her and caught her breath.",
    "Fill in blank: Alice was friends with Bob. Alice went to visit her friend _____. -> Bob",
    "What is the French translation of the house is red = la maison est rouge",
    "naïve café résumé 東京 — “quoted” 'single' \t tabs\n\nnewlines 0123456789",
]


def build_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer trained in memory, wrapped as a fast Hugging Face tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_TRAINING_TEXT * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>")


def gpt2_tokenizer_or_built(shared_tokenizer_dir: str | Path | None = None):
    """The real GPT-2 vocabulary when its files are at hand (tests), else one built on the spot."""
    from transformers import AutoTokenizer

    if shared_tokenizer_dir and (Path(shared_tokenizer_dir) / "vocab.json").exists():
        return AutoTokenizer.from_pretrained(str(shared_tokenizer_dir))
    return build_tokenizer()


def tiny_gpt2(vocab_size: int, n_positions: int = 256, seed: int = 0, n_layer: int = 2, n_embd: int = 64):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=4, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def tiny_llama(vocab_size: int, max_positions: int = 256, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=max_positions,
    )
    return LlamaForCausalLM(cfg).eval()


def save_tiny_checkpoint(folder: str | Path, arch: str = "gpt2", seed: int = 0, n_positions: int = 512, tokenizer_dir: str | Path | None = None) -> Path:
    """Write a tiny random checkpoint (config, safetensors weights, tokenizer) that `--model` can load."""
    folder = Path(folder)
    tok = gpt2_tokenizer_or_built(tokenizer_dir)
    model = tiny_gpt2(len(tok), n_positions, seed) if arch == "gpt2" else tiny_llama(len(tok), n_positions, seed)
    model.config.bos_token_id = model.config.eos_token_id = tok.eos_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder

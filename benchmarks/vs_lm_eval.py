"""icl-eval against lm-evaluation-harness 0.4.13: same model, same prompts, same machine, one run.

    PYTHONPATH=$PWD /work/venv-bench/bin/python benchmarks/vs_lm_eval.py [--limit 16] [--repeats 3] [--model PATH] [--backends hf,vllm]
    PYTHONPATH=$PWD python benchmarks/vs_lm_eval.py --mode e2e --model FOLDER   (whole processes: vs_lm_eval_e2e.py)

Both harnesses wrap the same in-memory model and tokenizer and are given the identical (context, continuation)
strings built by icl-eval's prompt builder; lm-eval is driven through HFLM.loglikelihood / generate_until
with Instance objects. Runs alternate between the harnesses; medians are printed with the ratio
lm-eval time / icl-eval time, the peak memory of each, the largest per-example log-likelihood difference
(over rows both harnesses tokenized identically) and the agreement of greedy predictions.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, load_model, machine, measured, median  # noqa: E402

from icl_eval import fewshot  # noqa: E402
from icl_eval.evaluator import Settings, build_prompt, prepare  # noqa: E402
from icl_eval.models.hf import HFModel  # noqa: E402
from icl_eval.registry import load_task  # noqa: E402
from icl_eval.requests import GenerationRequest, LoglikelihoodRequest  # noqa: E402


@dataclass
class Workload:
    name: str
    kind: str  # "loglikelihood" or "generate"
    requests: list  # (context, continuation) pairs, or contexts for generation
    model: torch.nn.Module
    gold: list[int] | None = None  # multiple choice: requests come in groups of 4, gold index per group


def task_requests(hf: HFModel, name: str, limit: int, shots: int, mode: str, seed: int) -> tuple[list[tuple[str, str]], list[int] | None]:
    """The (context, continuation) pairs icl-eval itself sends for a registered task, and the gold index per
    example for multiple choice (its candidates are consecutive pairs)."""
    task = load_task(name)
    settings = Settings(shots=(shots,), seed=seed, limit=limit, data_dir=str(SHARED / "data"), fewshot_mode=mode)
    prep = prepare(task, settings)
    prompts = [build_prompt(prep, d, shots, seed, hf, 0, mode) for d in prep.doc_ids]
    gold = [prep.example(p.doc_id).gold for p in prompts] if task.output_type == "multiple_choice" else None
    return [pair for p in prompts for pair in p.pairs], gold


def newline_biased(model: torch.nn.Module, tok, contexts: list[str], max_new: int, target_mean: float = 16.0) -> torch.nn.Module:
    """A copy whose output head favours "\n" just enough that greedy rows stop at scattered lengths.

    The unbiased model's greedy trajectories are recorded with the gap (best logit - newline logit) at each
    step; a bias b makes a row stop at its first step whose gap is below b (the trajectory is unchanged
    before that), so b is chosen from the observed gaps to put the mean stop near `target_mean` tokens.
    """
    newline = tok("\n").input_ids[-1]
    device = next(model.parameters()).device
    rows = []
    with torch.no_grad():
        for c in contexts[:8]:
            ids = torch.tensor([tok(c).input_ids[-512:]], device=device)
            out = model.generate(ids, max_new_tokens=max_new, do_sample=False, output_scores=True, return_dict_in_generate=True,
                                 pad_token_id=tok.eos_token_id, eos_token_id=None)
            scores = torch.stack(out.scores)[:, 0].float()
            rows.append((scores.max(-1).values - scores[:, newline]).tolist())

    def mean_stop(b: float) -> float:
        return sum(next((t + 1 for t, g in enumerate(r) if g < b), max_new) for r in rows) / len(rows)

    candidates = sorted({g for r in rows for g in r})
    bias = min(candidates, key=lambda b: abs(mean_stop(b + 1e-3) - target_mean)) + 1e-3
    biased = copy.deepcopy(model)
    head = biased.get_output_embeddings()
    new_head = torch.nn.Linear(head.in_features, head.out_features, bias=True, device=head.weight.device, dtype=head.weight.dtype)
    with torch.no_grad():
        new_head.weight.copy_(head.weight)
        new_head.bias.zero_()
        new_head.bias[newline] = bias
    biased.config.tie_word_embeddings = False
    biased.set_output_embeddings(new_head)
    return biased.eval()


def run_icl(hf: HFModel, w: Workload, max_new: int):
    if w.kind == "loglikelihood":
        out = hf.loglikelihood([LoglikelihoodRequest(c, t) for c, t in w.requests])
        return [(r.loglikelihood, r.is_greedy) for r in out]
    return [r.text for r in hf.generate([GenerationRequest(c, ("\n",), max_new) for c in w.requests])]


def run_lm(lm, w: Workload, max_new: int):
    from lm_eval.api.instance import Instance

    if w.kind == "loglikelihood":
        insts = [Instance("loglikelihood", {}, (c, t), i) for i, (c, t) in enumerate(w.requests)]
        return [(float(ll), bool(g)) for ll, g in lm.loglikelihood(insts, disable_tqdm=True)]
    gen = {"until": ["\n"], "max_gen_toks": max_new, "do_sample": False}
    insts = [Instance("generate_until", {}, (c, dict(gen)), i) for i, c in enumerate(w.requests)]
    return lm.generate_until(insts, disable_tqdm=True)


def compare(w: Workload, hf: HFModel, lm, icl_out, lm_out) -> dict:
    if w.kind == "generate":
        same = sum(a == b for a, b in zip(icl_out, lm_out))
        lengths = [len(hf.tokenizer(t).input_ids) for t in icl_out]
        return {"same_predictions": f"{same}/{len(icl_out)}", "generated_tokens": f"min {min(lengths)}, median {median(lengths)}, max {max(lengths)}"}
    same_tokens, diffs = 0, []
    for (c, t), a, b in zip(w.requests, icl_out, lm_out):
        ours = hf.encode_pair(c, t)
        ctx_enc, cont_enc = lm._encode_pair(c, t)
        if ours.continuation == cont_enc and ours.context[-1:] == ctx_enc[-1:]:
            same_tokens += 1
            diffs.append(abs(a[0] - b[0]))
    info = {"identically_tokenized": f"{same_tokens}/{len(w.requests)}", "max_abs_diff": max(diffs) if diffs else None,
            "same_is_greedy": f"{sum(a[1] == b[1] for a, b in zip(icl_out, lm_out))}/{len(icl_out)}"}
    if w.gold is not None:
        pick = lambda out: [max(range(4), key=lambda j: out[4 * q + j][0]) for q in range(len(w.gold))]  # noqa: E731
        info["same_predictions"] = f"{sum(a == b for a, b in zip(pick(icl_out), pick(lm_out)))}/{len(w.gold)}"
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint folder (default: GPT-2 124M architecture, random weights)")
    ap.add_argument("--limit", type=int, default=16, help="examples per workload (default 16)")
    ap.add_argument("--fixed-limit", type=int, default=None, help="examples for workload 3 (default: --limit); the shared prefix pays off with more")
    ap.add_argument("--gen-limit", type=int, default=32, help="examples for the generation workload (default 32)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workloads", default="1,2,3,4")
    ap.add_argument("--batch-size", default="8", help="rows per batch for lm-eval; icl-eval uses its token budget (auto)")
    ap.add_argument("--icl-batch-size", default=None, help="icl-eval rows per batch (default: the same as --batch-size), or auto")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    ap.add_argument("--backends", default="hf", help="hf: the HF rows above; vllm: icl-eval's vLLM backend against lm-eval's vllm model (benchmarks/vllm_rows.py); or hf,vllm")
    ap.add_argument("--vllm-block-size", type=int, default=32, help="vLLM KV-cache block size for the vllm rows (the CPU build takes multiples of 32)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tok, described = load_model(args.model, args.dtype, args.device)
    args.icl_batch_size = args.icl_batch_size or args.batch_size
    icl_bs = args.icl_batch_size if args.icl_batch_size == "auto" else int(args.icl_batch_size)
    hf = HFModel(model, tok, batch_size=icl_bs)
    wanted = {int(x) for x in args.workloads.split(",")}
    workloads = []
    if 1 in wanted:
        workloads.append(Workload("1 arithmetic_2da 32-shot per-example", "loglikelihood", task_requests(hf, "arithmetic_2da", args.limit, 32, "per_example", args.seed)[0], model))
    if 2 in wanted:
        reqs, gold = task_requests(hf, "hellaswag", args.limit, 5, "per_example", args.seed)
        workloads.append(Workload("2 hellaswag 5-shot 4-way MC", "loglikelihood", reqs, model, gold))
    if 3 in wanted:
        workloads.append(Workload("3 arithmetic_2da 32-shot fixed", "loglikelihood", task_requests(hf, "arithmetic_2da", args.fixed_limit or args.limit, 32, "fixed", args.seed)[0], model))
    if 4 in wanted:
        contexts = [c for c, _ in task_requests(hf, "arithmetic_2da", args.gen_limit, 4, "per_example", args.seed)[0]]
        biased = newline_biased(model, tok, contexts, args.max_new_tokens)
        workloads.append(Workload(f"4 generation, stop at newline, <= {args.max_new_tokens} new tokens", "generate", contexts, biased))

    backends = set(args.backends.split(","))
    report = hf_rows(args, workloads, model, tok, hf, icl_bs, described) if "hf" in backends else []
    vllm_report = None
    if "vllm" in backends:
        import gc

        gc.collect()  # lm-eval's HF harness is gone: the engine's KV space is reserved beside what is left
        from vllm_rows import vllm_rows

        vllm_report = vllm_rows(args, workloads, tok, run_icl, run_lm, compare, model)
    if args.json:
        rows = {"rows": report} if report else {}
        Path(args.json).write_text(json.dumps({"machine": machine(), "model": described, "args": vars(args), **rows, **({"vllm_rows": vllm_report} if vllm_report else {})}, indent=1))


def hf_rows(args, workloads: list[Workload], model, tok, hf: HFModel, icl_bs, described: str) -> list[dict]:
    """icl-eval's HF backend against lm-eval's HFLM on each workload: the table's rows."""
    from lm_eval.models.huggingface import HFLM

    harnesses = {}
    for w in workloads:
        if id(w.model) not in harnesses:
            ours = hf if w.model is model else HFModel(w.model, tok, batch_size=icl_bs)
            theirs = HFLM(pretrained=w.model, tokenizer=tok, batch_size=int(args.batch_size), device=args.device, max_length=hf.max_length)
            harnesses[id(w.model)] = (ours, theirs)

    print(f"machine: {machine()}\nmodel: {described}\nlimit {args.limit} (generation {args.gen_limit}), repeats {args.repeats}, lm-eval batch size {args.batch_size}, icl-eval batch size {args.icl_batch_size}\n")
    report = []
    for w in workloads:
        ours, theirs = harnesses[id(w.model)]
        times = {"icl": [], "lm": []}
        peaks = {"icl": [], "lm": []}
        outs = {}
        for rep in range(args.repeats):
            order = ["lm", "icl"] if rep % 2 == 0 else ["icl", "lm"]
            for who in order:
                if who == "icl":
                    ours.tokens_forwarded = 0
                    out, sec, peak = measured(lambda: run_icl(ours, w, args.max_new_tokens))
                    forwarded = ours.tokens_forwarded
                else:
                    out, sec, peak = measured(lambda: run_lm(theirs, w, args.max_new_tokens))
                times[who].append(sec)
                peaks[who].append(peak)
                outs[who] = out
            print(f"  {w.name}: repeat {rep + 1}: lm-eval {times['lm'][-1]:.2f}s, icl-eval {times['icl'][-1]:.2f}s", flush=True)
        row = {
            "workload": w.name, "requests": len(w.requests),
            "lm_eval_s": median(times["lm"]), "icl_eval_s": median(times["icl"]),
            "ratio": median(times["lm"]) / median(times["icl"]),
            "lm_eval_peak_mib": max(peaks["lm"]), "icl_eval_peak_mib": max(peaks["icl"]),
            "icl_eval_tokens_forwarded": forwarded, "icl_eval_tokens_per_s": forwarded / median(times["icl"]),
            **compare(w, ours, theirs, outs["icl"], outs["lm"]),
        }
        report.append(row)
        print(json.dumps(row), flush=True)
    print("\n| workload | requests | lm-eval s | icl-eval s | ratio | peak MiB lm-eval / icl-eval | agreement |")
    print("|---|---|---|---|---|---|---|")
    for r in report:
        agree = ", ".join(f"{k} {v if not isinstance(v, float) else f'{v:.2e}'}" for k, v in r.items() if k in ("identically_tokenized", "max_abs_diff", "same_is_greedy", "same_predictions", "generated_tokens"))
        print(f"| {r['workload']} | {r['requests']} | {r['lm_eval_s']:.2f} | {r['icl_eval_s']:.2f} | {r['ratio']:.2f}x | {r['lm_eval_peak_mib']:.0f} / {r['icl_eval_peak_mib']:.0f} | {agree} |")
    return report


if __name__ == "__main__":
    if "--mode" in sys.argv and sys.argv[sys.argv.index("--mode") + 1 :][:1] == ["e2e"]:
        from vs_lm_eval_e2e import main as e2e_main  # whole processes: its own options, see that module

        e2e_main(sys.argv[1:])
    else:
        main()

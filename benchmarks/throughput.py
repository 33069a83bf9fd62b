"""Time a log-likelihood run and print requests/s and tokens/s (and model-FLOPs utilisation on a GPU).

    PYTHONPATH=$PWD python benchmarks/throughput.py [--model PATH | --layers 4 --width 256] [--limit 64] [--shots 8]

The requests are arithmetic_2da prompts built by icl-eval's own prompt builder; the default model is a small
GPT-2 (4 layers, width 256) with random weights on the real GPT-2 vocabulary. tokens/s counts the tokens the
requests contain; "forwarded" counts what the model actually ran (shared prefixes once), the basis of MFU:
2 x parameters x tokens forwarded / seconds / peak FLOP/s (give --peak-tflops, e.g. 989 for an H100 in bf16).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, machine, measured, median  # noqa: E402

from icl_eval.evaluator import Settings, build_prompt, prepare  # noqa: E402
from icl_eval.models.hf import HFModel  # noqa: E402
from icl_eval.registry import load_task  # noqa: E402
from icl_eval.requests import LoglikelihoodRequest  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint folder (default: a small random GPT-2)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--limit", type=int, default=64)
    ap.add_argument("--shots", type=int, default=8)
    ap.add_argument("--fewshot-mode", default="per_example", choices=["per_example", "fixed"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", default="auto")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's peak dense TFLOP/s in this dtype, for MFU")
    args = ap.parse_args()

    if args.model:
        hf = HFModel.load(args.model, device=args.device, dtype=args.dtype, batch_size=args.batch_size)
        described = args.model
    else:
        from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

        tok = AutoTokenizer.from_pretrained(str(SHARED / "tokenizers" / "gpt2"))
        torch.manual_seed(0)
        cfg = GPT2Config(vocab_size=len(tok), n_layer=args.layers, n_embd=args.width, n_head=max(1, args.width // 64))
        model = GPT2LMHeadModel(cfg).to(device=args.device, dtype=getattr(torch, args.dtype)).eval()
        bs = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
        hf = HFModel(model, tok, batch_size=bs)
        described = f"GPT-2 architecture, {args.layers} layers, width {args.width}, random weights"
    task = load_task("arithmetic_2da")
    settings = Settings(shots=(args.shots,), limit=args.limit, data_dir=str(SHARED / "data"), fewshot_mode=args.fewshot_mode)
    prep = prepare(task, settings)
    requests = [LoglikelihoodRequest(p.context, p.target) for p in (build_prompt(prep, d, args.shots, settings.seed, hf, 0, args.fewshot_mode) for d in prep.doc_ids)]
    request_tokens = sum(len(e.context) + len(e.continuation) - 1 for e in (hf.encode_pair(r.context, r.continuation) for r in requests))

    hf.loglikelihood(requests[:4])  # warm-up: first calls pay for allocation and kernel selection
    times, peaks = [], []
    for _ in range(args.repeats):
        hf.tokens_forwarded = 0
        _, seconds, peak = measured(lambda: hf.loglikelihood(requests))
        times.append(seconds)
        peaks.append(peak)
    t = median(times)
    params = hf.num_parameters
    print(f"machine: {machine()}\nmodel: {described}, {params / 1e6:.1f}M parameters, {args.dtype} on {hf.device}")
    print(f"workload: arithmetic_2da {args.shots}-shot ({args.fewshot_mode}), {len(requests)} requests, {request_tokens} request tokens, {hf.tokens_forwarded} forwarded")
    print(f"median of {args.repeats}: {t:.3f} s  ->  {len(requests) / t:.1f} requests/s, {request_tokens / t:,.0f} tokens/s, {hf.tokens_forwarded / t:,.0f} forwarded tokens/s; peak memory +{max(peaks):.0f} MiB")
    if args.peak_tflops:
        print(f"model-FLOPs utilisation: {2 * params * hf.tokens_forwarded / t / (args.peak_tflops * 1e12):.1%} of {args.peak_tflops} TFLOP/s")


if __name__ == "__main__":
    main()

"""End-to-end mode of vs_lm_eval.py: whole `icl-eval run` processes against whole `lm_eval` processes.

    PYTHONPATH=$PWD python benchmarks/vs_lm_eval.py --mode e2e --model FOLDER [--limit 100] [--pairs 3]
        [--workloads hellaswag0,piqa0,...] [--lm-batch-size 32] [--lm-eval /tmp/venv-lead/bin/python]

What a user meets: each measurement is one fresh process (import, load, checks, task loading, scoring,
writing results), timed by wall clock, with the peak resident set of that process alone (its VmHWM at
exit, written by the launcher). icl-eval runs at its defaults (`--batch-size auto`); lm-eval runs its `hf` model with
`--batch_size` (--lm-batch-size). Both see the same documents and the same prompt strings: the script builds
icl-eval's prompts for the seeded --limit subset (evaluator.build_prompt, as `icl-eval run` does) and writes
them as a JSON-lines dataset with an lm-eval task YAML that reads them verbatim (context as doc_to_text,
the candidates or the target after an empty target_delimiter, zero lm-eval shots: the demonstrations are
already in the context). The two harnesses alternate within a pair and the first to run swaps every pair;
medians are printed with ratios lm-eval / icl-eval, and the per-example agreement read back from both
harnesses' sample logs. A `startup` row times --limit 1 runs (HellaSwag zero-shot, one document).

The matmul limit: tokens forwarded x 2 x parameters over icl-eval's scoring time, as a fraction of this
machine's torch matmul throughput at the model's shapes (measured in the same run, see matmul_gflops).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("ICL_EVAL_SHARED", REPO.parent / "shared"))

# lm-eval's import of transformers trips on PyPI's torchvision beside the CPU torch; icl_eval's import hides
# those packages first (icl_eval/media_packages.py). The launcher does nothing else.
# icl-eval as `python -m icl_eval`, plus one line at exit with the tokens its model forwarded (the matmul-limit
# figure needs them; the product does not record them): HFModel's counter, read through a constructor hook.
# Both launchers write their process's peak resident set (VmHWM) at exit. ru_maxrss from wait4 is not it: a
# child that subprocess starts (vfork, then exec) counts this process's high-water mark as its own, so every
# child's peak read at least as high as this process's ever was (its model load, its float64 check). With
# VmHWM, what this process holds no longer counts.
PEAK_PROBE = (
    "import atexit, os\n"
    "atexit.register(lambda: open(os.environ['E2E_PEAK_FILE'], 'w').write(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM'))))\n"
)
ICL_LAUNCHER = PEAK_PROBE + (
    "import atexit, json, os, runpy, sys; from icl_eval.models import hf\n"
    "made = []; init = hf.HFModel.__init__\n"
    "def hooked(self, *a, **k):\n    init(self, *a, **k); made.append(self)\n"
    "hf.HFModel.__init__ = hooked\n"
    "atexit.register(lambda: open(os.environ['E2E_TOKENS_FILE'], 'w').write(json.dumps(sum(m.tokens_forwarded for m in made))))\n"
    "sys.argv = ['icl-eval'] + sys.argv[1:]; runpy.run_module('icl_eval', run_name='__main__')"
)
LM_EVAL_LAUNCHER = PEAK_PROBE + "import sys, icl_eval; from lm_eval.__main__ import cli_evaluate; sys.argv[0] = 'lm_eval'; sys.exit(cli_evaluate())"


@dataclass(frozen=True)
class Spec:
    """One workload: icl-eval tasks at one shot count, run as one process per harness."""

    name: str
    tasks: tuple[str, ...]
    shots: int
    kind: str  # "mc", "ll" (one continuation) or "gen"


WORKLOADS = {
    "hellaswag0": Spec("hellaswag0", ("hellaswag",), 0, "mc"),
    "piqa0": Spec("piqa0", ("piqa",), 0, "mc"),
    "arc_easy0": Spec("arc_easy0", ("arc_easy",), 0, "mc"),
    "lambada0": Spec("lambada0", ("lambada",), 0, "ll"),
    "three0": Spec("three0", ("hellaswag", "lambada", "arc_easy"), 0, "mixed"),
    "hellaswag10": Spec("hellaswag10", ("hellaswag",), 10, "mc"),
    "arith32": Spec("arith32", ("arithmetic_2da",), 32, "ll"),
    "triviaqa5": Spec("triviaqa5", ("triviaqa",), 5, "gen"),
    "arithgen8": Spec("arithgen8", ("arithmetic_2da_gen",), 8, "gen"),
    # the same task zero- and one-shot: the paper reports arithmetic in all three settings
    "arithgen0": Spec("arithgen0", ("arithmetic_2da_gen",), 0, "gen"),
    "arithgen1": Spec("arithgen1", ("arithmetic_2da_gen",), 1, "gen"),
}
DEFAULT = "startup,hellaswag0,piqa0,arc_easy0,lambada0,three0,hellaswag10,arith32,triviaqa5,arithgen8"

# arithmetic answered by greedy generation: the registered task's data and template, output_type generate.
ARITH_GEN_YAML = """name: arithmetic_2da_gen
family: arithmetic
output_type: generate
template: arithmetic.jinja
fewshot_delimiter: ""
target_delimiter: ""
metrics: [exact_match]
until: ["\\n"]
max_new_tokens: 8
data:
  local: gpt3/two_digit_addition.jsonl
"""


@dataclass
class Measured:
    seconds: float
    cpu_s: float  # user + system: less sensitive than wall clock to other jobs on the machine
    peak_mib: float
    rc: int
    out_dir: Path
    stderr_tail: str = ""
    timing: dict = field(default_factory=dict)


def run_process(cmd: list[str], env: dict, out_dir: Path, log: Path) -> Measured:
    """Wall clock, CPU time (wait4) and the process's own peak RSS (the launcher's VmHWM, see PEAK_PROBE)."""
    peak_file = out_dir / "peak-kb.txt"
    start = time.perf_counter()
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, env=dict(env, E2E_PEAK_FILE=str(peak_file)), stdout=err, stderr=subprocess.STDOUT, cwd=str(out_dir))
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    tail = log.read_text(errors="replace")[-1500:] if proc.returncode else ""
    peak_kb = int(peak_file.read_text()) if peak_file.exists() else usage.ru_maxrss  # no file: it died before its atexit
    return Measured(seconds, usage.ru_utime + usage.ru_stime, peak_kb / 1024, proc.returncode, out_dir, tail)


def lm_eval_yaml(task: str, data_file: Path, kind: str, gen: dict | None) -> str:
    """A task reading icl-eval's prompt strings verbatim: doc_to_* are field names, nothing is templated."""
    head = f"task: {task}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data_file}\ntest_split: test\n"
    if kind == "mc":
        body = "output_type: multiple_choice\ndoc_to_text: context\ndoc_to_choice: choices\ndoc_to_target: gold\ntarget_delimiter: \"\"\nmetric_list:\n  - metric: acc\n"
    elif kind == "ll":
        body = "output_type: loglikelihood\ndoc_to_text: context\ndoc_to_target: target\ntarget_delimiter: \"\"\nmetric_list:\n  - metric: perplexity\n  - metric: acc\n"
    else:
        until = json.dumps(list(gen["until"]))
        body = (
            "output_type: generate_until\ndoc_to_text: context\ndoc_to_target: target\ntarget_delimiter: \"\"\n"
            f"generation_kwargs:\n  until: {until}\n  max_gen_toks: {gen['max_new_tokens']}\n  do_sample: false\n"
            "metric_list:\n  - metric: exact_match\n"
        )
    return head + body


def export_prompts(hf, spec: Spec, limit: int, seed: int, work: Path, include: Path) -> dict[str, dict]:
    """Per icl-eval task: icl-eval's prompts for the --limit subset, as an lm-eval dataset + task YAML."""
    from icl_eval.evaluator import Settings, build_prompt, prepare
    from icl_eval.registry import load_task

    out = {}
    for name in spec.tasks:
        task = load_task(name, [str(include)])
        settings = Settings(shots=(spec.shots,), seed=seed, limit=limit, data_dir=str(SHARED / "data"), fewshot_mode="per_example")
        prep = prepare(task, settings)
        kind = {"multiple_choice": "mc", "loglikelihood": "ll", "generate": "gen"}[task.output_type]
        extra = task.max_new_tokens if kind == "gen" else 0
        docs = []
        for d in prep.doc_ids:
            p = build_prompt(prep, d, spec.shots, seed, hf, extra, "per_example")
            if kind == "mc":
                contexts = {c for c, _ in p.pairs}
                assert len(contexts) == 1, f"{name}: candidates with different contexts"
                docs.append({"doc_id": d, "context": p.pairs[0][0], "choices": [t for _, t in p.pairs], "gold": prep.example(d).gold})
            else:
                docs.append({"doc_id": d, "context": p.context, "target": p.target})
        lm_name = f"e2e_{spec.name}_{name}"
        data_file = work / f"{lm_name}.jsonl"
        data_file.write_text("".join(json.dumps(x) + "\n" for x in docs))
        gen = {"until": task.until, "max_new_tokens": task.max_new_tokens} if kind == "gen" else None
        (work / "lm_tasks" / f"{lm_name}.yaml").write_text(lm_eval_yaml(lm_name, data_file, kind, gen))
        out[name] = {"lm_task": lm_name, "kind": kind, "docs": docs}
    return out


def icl_command(model: str, spec: Spec, limit: int, seed: int, out: Path, include: Path) -> list[str]:
    return [
        sys.executable, "-c", ICL_LAUNCHER, "run", "--model", model, "--tasks", ",".join(spec.tasks), "--shots", str(spec.shots),
        "--limit", str(limit), "--seed", str(seed), "--data-dir", str(SHARED / "data"), "--include-path", str(include),
        "--device", "cpu", "--dtype", "float32", "--no-cache", "--output", str(out),
    ]


def lm_command(python: str, model: str, tasks: list[str], batch_size: str, out: Path, include: Path, limit: int | None = None) -> list[str]:
    cmd = [
        python, "-c", LM_EVAL_LAUNCHER, "--model", "hf", "--model_args", f"pretrained={model},dtype=float32",
        "--tasks", ",".join(tasks), "--include_path", str(include), "--batch_size", batch_size, "--device", "cpu",
        "--log_samples", "--output_path", str(out),
    ]
    return cmd + (["--limit", str(limit)] if limit else [])


def icl_samples(out: Path) -> dict[tuple[str, int], dict]:
    rows = {}
    for f in out.glob("*/samples/*.jsonl"):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            rows[(r["task"], r["doc_id"])] = r
    return rows


def lm_samples(out: Path) -> dict[tuple[str, int], dict]:
    rows = {}
    for f in out.rglob("samples_*.jsonl"):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            rows[(r["doc"]["_task"] if "_task" in r["doc"] else f.name, r["doc"]["doc_id"])] = r
    return rows


def agreement(exported: dict[str, dict], icl_out: Path, lm_out: Path) -> dict:
    """Largest |log-likelihood difference| per scored string, identical picks / greedy flags / generations."""
    from icl_eval.models.openai_server import cut_at_stop

    ours = icl_samples(icl_out)
    theirs_by_file: dict[str, dict[int, dict]] = {}
    for f in lm_out.rglob("samples_*.jsonl"):
        task = f.name.removeprefix("samples_").rsplit("_", 1)[0]
        theirs_by_file[task] = {json.loads(x)["doc"]["doc_id"]: json.loads(x) for x in f.read_text().splitlines()}
    diff, compared, same_pick, same_greedy, same_text, n = 0.0, 0, 0, 0, 0, 0
    worst = None  # the scored string the two differ most on: (context, continuation, icl-eval's, lm-eval's)
    for name, ex in exported.items():
        theirs = theirs_by_file.get(ex["lm_task"], {})
        for doc in ex["docs"]:
            a, b = ours.get((name, doc["doc_id"])), theirs.get(doc["doc_id"])
            if a is None or b is None:
                continue
            n += 1
            if ex["kind"] == "gen":
                # icl-eval logs the raw text with its stop sequence; lm-eval returns it cut before the first one
                same_text += cut_at_stop(a["generation_raw"], a["until"]) == b["resps"][0][0]
                continue
            lls = [c["loglikelihood"] for c in a["candidates"]] if "candidates" in a else [a["loglikelihood"]]
            greedy = [c["is_greedy"] for c in a["candidates"]] if "candidates" in a else [a.get("is_greedy")]
            their = [float(r[0][0]) for r in b["resps"]]
            their_greedy = [str(r[0][1]) == "True" for r in b["resps"]]  # lm-eval logs its tuples as strings
            continuations = doc["choices"] if "choices" in doc else [doc["target"]]
            for c, x, y in zip(continuations, lls, their):
                if abs(x - y) >= diff:
                    diff, worst = abs(x - y), (doc["context"], c, x, y)
            compared += len(lls)
            same_greedy += sum(x == y for x, y in zip(greedy, their_greedy)) == len(lls)
            if ex["kind"] == "mc":
                same_pick += max(range(len(lls)), key=lls.__getitem__) == max(range(len(their)), key=their.__getitem__)
    kinds = {ex["kind"] for ex in exported.values()}
    info: dict = {"examples_compared": n}
    if kinds - {"gen"}:
        info.update(max_abs_diff=diff, scored_strings=compared, same_is_greedy=same_greedy, worst=worst)
    if "mc" in kinds:
        info["same_picks"] = same_pick
    if "gen" in kinds:
        info["same_generations"] = same_text
    return info


def exactness(model_folder: str, worst: tuple[str, str, float, float]) -> dict[str, float]:
    """Each harness's distance, on the string they differ most on, from the log-likelihood that the same
    float32 logits give under a float64 log-softmax (one whole-row forward): which of the two is off."""
    import torch

    from icl_eval.models.hf import HFModel

    context, continuation, ours, theirs = worst
    hf = HFModel.load(model_folder, device="cpu", dtype="float32", batch_size=1)
    e = hf.encode_pair(context, continuation)
    x = hf._model_input(e)
    with torch.no_grad():
        logprobs = hf.model(input_ids=torch.tensor([x])).logits[0].double().log_softmax(-1)
    start = len(x) - len(e.continuation)
    exact = sum(logprobs[start + j, t].item() for j, t in enumerate(e.continuation))
    return {"worst_tokens": len(e.continuation), "icl_eval_minus_float64": ours - exact, "lm_eval_minus_float64": theirs - exact}


def matmul_gflops(hidden: int, inter: int, vocab: int, tokens: int = 512, repeats: int = 5) -> dict[str, float]:
    """torch float32 matmul throughput on this machine at the model's shapes: [tokens, hidden] x [hidden, out]."""
    import torch

    out = {}
    for label, n in (("attn/mlp in", inter), ("mlp out", hidden), ("qkv", hidden)):
        k = hidden if label != "mlp out" else inter
        a, b = torch.randn(tokens, k), torch.randn(k, n)
        a @ b
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
        out[label] = 2 * tokens * k * n / best / 1e9
    return out


def model_shapes(folder: str) -> tuple[int, int, int, int]:
    cfg = json.loads((Path(folder) / "config.json").read_text())
    text = cfg.get("text_config", cfg)
    return text["hidden_size"], text.get("intermediate_size", 4 * text["hidden_size"]), text["vocab_size"], text.get("num_hidden_layers", 0)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="vs_lm_eval.py --mode e2e", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", default="e2e")
    ap.add_argument("--model", required=True, help="a checkpoint folder both harnesses load (a converted GGUF: ~/.cache/icl-eval/gguf/<sha>/)")
    ap.add_argument("--icl-model", default=None, help="what icl-eval is given instead (e.g. the .gguf file); default --model")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--workloads", default=DEFAULT)
    ap.add_argument("--lm-batch-size", default="32", help="lm-eval's --batch_size (its best on this machine; see README); "
                    "per workload as 32,arith32=8 (a 262k vocabulary's full log-softmax at 32 long rows does not fit)")
    ap.add_argument("--lm-eval", default="/tmp/venv-lead/bin/python", help="a Python with lm-eval 0.4.13 installed")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for both harnesses (default: torch's choice)")
    ap.add_argument("--keep", default=None, help="keep the generated tasks and outputs in this folder")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    t_all = time.perf_counter()
    sys.path.insert(0, str(REPO))
    import icl_eval  # noqa: F401  (hides mismatched media packages before transformers loads)
    from icl_eval.models.hf import HFModel

    work = Path(args.keep or tempfile.mkdtemp(prefix="e2e-vs-lm-eval-"))
    include = work / "icl_tasks"
    for d in (include, work / "lm_tasks", work / "runs"):
        d.mkdir(parents=True, exist_ok=True)
    (include / "arithmetic_2da_gen.yaml").write_text(ARITH_GEN_YAML)

    env = dict(os.environ, PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false", HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
        import torch

        torch.set_num_threads(args.threads)  # the matmul reference runs at the children's thread count
    hf = HFModel.load(args.model, device="cpu", dtype="float32", batch_size=1)
    hidden, inter, vocab, layers = model_shapes(args.model)
    params = hf.num_parameters
    gflops = matmul_gflops(hidden, inter, vocab)
    del hf.model
    icl_model = args.icl_model or args.model
    names = args.workloads.split(",")
    lm_batch = lm_batch_sizes(args.lm_batch_size)
    print(f"model {args.model}: {params:,} parameters; lm-eval batch size {args.lm_batch_size}; limit {args.limit}; pairs {args.pairs}")
    print(f"torch float32 matmul at the model's shapes (512 tokens): " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in gflops.items()), flush=True)
    peak_gflops = max(gflops.values())
    rows = []
    for name in names:
        if name == "startup":
            spec = WORKLOADS["hellaswag0"]
            exported = export_prompts(hf, spec, 1, args.seed, work, include)
            lm_tasks = [e["lm_task"] for e in exported.values()]
            limit = 1
        else:
            spec = WORKLOADS[name]
            exported = export_prompts(hf, spec, args.limit, args.seed, work, include)
            lm_tasks = [e["lm_task"] for e in exported.values()]
            limit = args.limit
        times: dict[str, list[Measured]] = {"icl": [], "lm": []}
        for pair in range(args.pairs):
            for who in (("lm", "icl") if pair % 2 == 0 else ("icl", "lm")):
                out = work / "runs" / f"{name}-{who}-{pair}"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(parents=True)
                if who == "icl":
                    cmd = icl_command(icl_model, spec, limit, args.seed, out, include)
                else:
                    cmd = lm_command(args.lm_eval, args.model, lm_tasks, lm_batch.get(name, lm_batch[""]), out, work / "lm_tasks")
                m = run_process(cmd, dict(env, E2E_TOKENS_FILE=str(out / "tokens.json")), out, out / "log.txt")
                if m.rc:
                    print(f"  {name} {who} failed (exit {m.rc}):\n{m.stderr_tail}", flush=True)
                    raise SystemExit(1)
                times[who].append(m)
            lm, icl = times["lm"][-1], times["icl"][-1]
            print(f"  {name}: pair {pair + 1}: lm-eval {lm.seconds:.1f}s (cpu {lm.cpu_s:.1f}s) {lm.peak_mib:.0f} MiB, "
                  f"icl-eval {icl.seconds:.1f}s (cpu {icl.cpu_s:.1f}s) {icl.peak_mib:.0f} MiB", flush=True)
        med = {k: statistics.median(m.seconds for m in v) for k, v in times.items()}
        cpu = {k: statistics.median(m.cpu_s for m in v) for k, v in times.items()}
        row = {
            "workload": name, "tasks": list(spec.tasks), "shots": spec.shots, "limit": limit, "lm_batch_size": lm_batch.get(name, lm_batch[""]),
            "lm_eval_s": med["lm"], "icl_eval_s": med["icl"], "ratio": med["lm"] / med["icl"],
            "lm_eval_cpu_s": cpu["lm"], "icl_eval_cpu_s": cpu["icl"], "cpu_ratio": cpu["lm"] / cpu["icl"],
            "lm_eval_peak_mib": statistics.median(m.peak_mib for m in times["lm"]),
            "icl_eval_peak_mib": statistics.median(m.peak_mib for m in times["icl"]),
            "all_s": {k: [round(m.seconds, 2) for m in v] for k, v in times.items()},
            **agreement(exported, times["icl"][-1].out_dir, times["lm"][-1].out_dir),
        }
        if row.get("worst"):
            row.update(exactness(args.model, row.pop("worst")))
        else:
            row.pop("worst", None)
        scoring = scoring_stats(times["icl"])
        if scoring:
            row.update(scoring)
            row["matmul_fraction"] = row["tokens_forwarded"] * 2 * params / row["scoring_s"] / 1e9 / peak_gflops
            # The input embedding is a lookup, not a matmul: without it the figure is the work actually done
            # per forwarded token (the output head, at scored positions only, is left out too).
            body = params - vocab * hidden
            row["matmul_fraction_without_embedding"] = row["tokens_forwarded"] * 2 * body / row["scoring_s"] / 1e9 / peak_gflops
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:  # after every workload: a long run stopped part-way keeps what it measured
            Path(args.json).write_text(json.dumps({"args": vars(args), "gflops": gflops, "params": params, "rows": rows}, indent=1))
    print("\n| workload | lm-eval s | icl-eval s | ratio | cpu-s ratio | peak MiB lm-eval / icl-eval | agreement | matmul fraction (without the embedding) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        agree = ", ".join(f"{k} {v:.1e}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()
                          if k in ("examples_compared", "max_abs_diff", "scored_strings", "same_is_greedy", "same_picks", "same_generations",
                                   "worst_tokens", "icl_eval_minus_float64", "lm_eval_minus_float64"))
        frac = f"{r['matmul_fraction']:.0%} ({r['matmul_fraction_without_embedding']:.0%})" if "matmul_fraction" in r else ""
        print(f"| {r['workload']} | {r['lm_eval_s']:.1f} | {r['icl_eval_s']:.1f} | {r['ratio']:.2f}x | {r['cpu_ratio']:.2f}x | {r['lm_eval_peak_mib']:.0f} / {r['icl_eval_peak_mib']:.0f} | {agree} | {frac} |")
    print(f"\nwhole measurement: {time.perf_counter() - t_all:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "gflops": gflops, "params": params, "rows": rows}, indent=1))


def lm_batch_sizes(text: str) -> dict[str, str]:
    """'32,arith32=8' -> {'': '32', 'arith32': '8'}: a default and per-workload overrides."""
    out = {"": "32"}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, size = part.rpartition("=")
        out[name] = size
    return out


def scoring_stats(runs: list[Measured]) -> dict | None:
    """Tokens icl-eval forwarded (the launcher's count) and its median scoring seconds (results.json's per-task
    `seconds`: the model calls of each task, no start-up)."""
    got = []
    for m in runs:
        tokens = m.out_dir / "tokens.json"
        seconds = [sum(t.get("seconds", {}).values()) for f in m.out_dir.glob("*/results.json") for t in json.loads(f.read_text())["tasks"].values()]
        if tokens.exists() and seconds:
            got.append((json.loads(tokens.read_text()), sum(seconds)))
    if not got:
        return None
    return {"tokens_forwarded": got[-1][0], "scoring_s": statistics.median(g[1] for g in got)}


if __name__ == "__main__":
    main(sys.argv[1:])

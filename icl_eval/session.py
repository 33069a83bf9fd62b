"""Set-up shared by the commands that evaluate: everything that can be checked without a model is checked first
(tasks, templates, data, few-shot pools, devices, a contamination report), then the model loads and is wrapped
(response cache, data parallel) behind the same backend contract."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from icl_eval.errors import IclEvalError
from icl_eval.evaluator import PreparedTask, Settings, prepare_all, refuse_chat
from icl_eval.requests import Model


@dataclass
class Inputs:
    """A run's checked inputs: what a bad value would otherwise fail on after a long model load."""

    prepared: list[PreparedTask]
    settings: Settings
    contamination: dict[str, Any] | None


def check_inputs(
    tasks: str, include_paths: list[str], settings: Settings, device: str, contamination: str | None = None,
    shot_spec: tuple[int | str, ...] | None = None, echo: Callable[[str], None] = print,
) -> Inputs:
    """`shot_spec`: shot counts and the word `fewshot` (each task's paper K); tasks of a group whose data is
    missing are skipped with a line through `echo`."""
    from icl_eval import shotplan
    from icl_eval.devices import validate_device
    from icl_eval.prompts import load_template
    from icl_eval.registry import load_tasks

    validate_device(device)
    data_dir = settings.data_dir or os.environ.get("ICL_EVAL_DATA_DIR")
    loaded = load_tasks(tasks, include_paths, data_dir=data_dir, on_skip=echo)
    for task in loaded:
        load_template(task)
    report = load_contamination(contamination)
    spec = shot_spec if shot_spec is not None else settings.shots
    shots_for: dict[str, tuple[int, ...]] = {}
    refusals = []
    for task in loaded:
        try:
            refuse_chat(task, settings)
            shots_for[task.name] = _allowed_shots(task, shotplan.task_shots(spec, task), echo)
        except IclEvalError as e:  # none of the shot counts fits this kind, or it takes no chat template: the others still run
            refusals.append(e)
    if refusals and not shots_for:
        raise refusals[0]
    for e in refusals:
        echo(f"skipped: {e}")
    loaded = [task for task in loaded if task.name in shots_for]
    every = tuple(dict.fromkeys(k for shots in shots_for.values() for k in shots))
    settings = dataclasses.replace(settings, data_dir=data_dir, shots=every)
    return Inputs(prepare_all(loaded, settings, shots_for), settings, report)


def load_contamination(path: str | None) -> dict[str, Any] | None:
    if path is None:
        return None
    from icl_eval.contamination.rescore import load_report

    return load_report(path)


def wrap(model: Model, cache_path: str | None, rank: int = 0, processes: int = 1) -> tuple[Model, Any]:
    """The backend behind its wrappers: the response cache (None: off), then data parallel across processes.

    Data parallel sits outside the cache: each process looks up and stores only its own shard, so no
    collective waits on cache state. Returns the wrapped model and the cache (to report on and close)."""
    from icl_eval.cache import CachedModel, ResponseCache, code_version

    cache = None
    if cache_path is not None:
        cache = ResponseCache(cache_path)
        model = CachedModel(model, cache, model.describe()["fingerprint"], model.settings()["bos_policy"], code_version(model))
    if processes > 1:
        from icl_eval import distributed

        model = distributed.DataParallel(model, rank, processes)
    return model, cache


def refuse_conflicting(no_cache: bool, cache: str | None, output: str) -> None:
    if no_cache and cache:
        raise IclEvalError(f"--cache {cache} and --no-cache contradict each other; give one of them")
    if output == "":
        raise IclEvalError("--output '': give a folder, e.g. --output results (an empty one would write into the current folder)")


# The run options of --backend openai (cli.py's run parser): None when not given.
SERVER_OPTIONS = ("base_url", "api_key_env", "concurrency", "tokenizer", "max_length")


def server_options(args: Any) -> dict[str, Any]:
    """The server options a `run` command line gave (those left at None are left out)."""
    return {k: getattr(args, k, None) for k in SERVER_OPTIONS if getattr(args, k, None) is not None}


# The run options of --backend vllm (cli.py's run parser): None when not given.
ENGINE_OPTIONS = ("tensor_parallel_size", "model_args")


def engine_options(args: Any) -> dict[str, Any]:
    """The vLLM engine options a `run` command line gave (those left at None are left out)."""
    return {k: getattr(args, k, None) for k in ENGINE_OPTIONS if getattr(args, k, None) is not None}


def backend_factory(name: str, server: dict[str, Any] | None = None, engine: dict[str, Any] | None = None) -> Callable[..., Model]:
    """The loader of a --backend: `hf` (Hugging Face in-process), `openai` (an OpenAI-compatible server, given
    `server`: base_url, api_key_env, concurrency, tokenizer, max_length) or an installed plugin's (icl_eval.models group).

    A plugin factory is called as factory(model, device=..., dtype=..., batch_size=..., bos_policy=...,
    trust_remote_code=..., device_map=...) and returns an object meeting requests.Model. `vllm`: vLLM in-process,
    given `engine`: tensor_parallel_size, model_args."""
    server = server or {}
    engine = engine or {}
    if engine and name != "vllm":
        given = ", ".join("--" + k.replace("_", "-") for k in engine)
        raise IclEvalError(f"{given}: options of --backend vllm (vLLM in-process), not of --backend {name}; add --backend vllm or drop them")
    if name == "openai":
        import functools

        from icl_eval.models.openai_server import OpenAIServerModel

        if "base_url" not in server:
            raise IclEvalError("--backend openai needs --base-url, e.g. --base-url http://localhost:8000/v1")
        return functools.partial(OpenAIServerModel.load, **server)
    if server:
        given = ", ".join("--" + k.replace("_", "-") for k in server)
        raise IclEvalError(f"{given}: options of --backend openai (an OpenAI-compatible server), not of --backend {name}; add --backend openai or drop them")
    if name == "vllm":
        import functools

        import importlib.util

        from icl_eval.models.vllm_engine import VLLMModel, missing_vllm_message, parse_model_args

        try:
            found_vllm = importlib.util.find_spec("vllm") is not None
        except ValueError:  # sys.modules["vllm"] is None: blocked
            found_vllm = False
        if not found_vllm:  # before the model is read
            raise IclEvalError(missing_vllm_message())
        if isinstance(engine.get("model_args"), str):
            engine = dict(engine, model_args=parse_model_args(engine["model_args"]))
        return functools.partial(VLLMModel.load, **engine)
    if name == "hf":
        from icl_eval.models.hf import HFModel

        return HFModel.load
    from icl_eval import plugins

    found = plugins.load_group(plugins.MODELS)
    if name not in found:
        known = ", ".join(["hf", "openai", "vllm", *sorted(found)])
        raise IclEvalError(f"--backend {name}: no such backend; installed: {known} (a plugin adds one through the icl_eval.models entry-point group)")
    return found[name]  # type: ignore[return-value]


def _allowed_shots(task, shots: tuple[int, ...], echo: Callable[[str], None]) -> tuple[int, ...]:
    """The shot counts a task's kind allows (a document's perplexity takes no demonstrations): the others are left
    out with a line, so `--tasks gpt3 --shots 0,1` runs PTB at 0; a task left with none is an error."""
    from icl_eval.kinds import kind_of

    most = kind_of(task.output_type, task.path).max_shots
    if most is None:
        return shots
    allowed = tuple(k for k in shots if k <= most)
    if not allowed:
        raise IclEvalError(f"--shots {','.join(map(str, shots))}: task '{task.name}' ({task.output_type}) takes at most {most} demonstrations; run it with --shots {most}")
    if allowed != shots:
        echo(f"{task.name}: {task.output_type} takes at most {most} demonstrations: it runs at {','.join(map(str, allowed))} only")
    return allowed

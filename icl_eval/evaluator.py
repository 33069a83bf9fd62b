"""One evaluation run, the same generic path for every kind of task: for each task and shot count, build the
prompts, collect every prompt's requests, make one backend call, split the results back and let the task's kind
score them. `evaluate` returns the whole result and writes nothing; the caller writes and prints."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from icl_eval import fewshot, metrics
from icl_eval.data import load_source
from icl_eval.errors import IclEvalError
from icl_eval.kinds import Kind, Prompt, kind_of
from icl_eval.chat import continuation as chat_continuation
from icl_eval.prompts import Example, assemble, description_for, prompt_hash, template_hash
from icl_eval.requests import Model, Request, Result, call_model
from icl_eval.results import Record, RunResult, SampleLog, TaskSummary, new_run_id, now
from icl_eval.task_config import TaskConfig

if TYPE_CHECKING:
    from icl_eval.chat import ChatFormat


@dataclass(frozen=True)
class Settings:
    shots: tuple[int, ...] = (0,)
    seed: int = 1234
    limit: int | None = None
    data_dir: str | None = None
    log_samples: bool = True
    fewshot_mode: str = "per_example"  # or "fixed": one seeded demonstration set per task and K for every example
    chat: ChatFormat | None = None  # --chat-template: prompts rendered as conversations by the tokenizer's template


@dataclass
class PreparedTask:
    """A task's data, loaded once and shared by every shot count."""

    task: TaskConfig
    docs: list[dict]
    source: str
    pool: list[dict]  # the demonstration pool
    same_split: bool  # the pool is the eval split itself, so the example must be excluded
    doc_ids: list[int]  # the documents evaluated (all, or the --limit subset)
    shots: tuple[int, ...] = ()  # the shot counts this task runs at (--shots fewshot differs by task); () = the settings'
    _rendered: dict[tuple[bool, int], Example] = field(default_factory=dict)
    _groups: dict[Any, set[int]] | None = None

    @property
    def kind(self) -> Kind:
        return kind_of(self.task.output_type, self.task.path)

    def same_group(self, doc_id: int) -> frozenset[int]:
        """The eval documents that share `doc_id`'s `fewshot_group` field (one CoQA story, one QuAC dialogue):
        never its demonstrations, since their turns hold its question and answer."""
        field_name = self.task.fewshot_group
        if field_name is None or not self.same_split:
            return frozenset()
        if self._groups is None:
            self._groups = {}
            for i, doc in enumerate(self.docs):
                self._groups.setdefault(doc.get(field_name), set()).add(i)
        return frozenset(self._groups.get(self.docs[doc_id].get(field_name), ()))

    def example(self, doc_id: int, from_pool: bool = False) -> Example:
        key = (from_pool and not self.same_split, doc_id)
        if key not in self._rendered:
            docs = self.pool if key[0] else self.docs
            self._rendered[key] = self.kind.example(self.task, docs[doc_id], doc_id)
        return self._rendered[key]


def prepare(task: TaskConfig, settings: Settings) -> PreparedTask:
    docs, source = load_source(task.data, settings.data_dir, settings.seed, f"task '{task.name}' ({task.path})")
    if task.fewshot is not None:
        pool, _ = load_source(task.fewshot, settings.data_dir, settings.seed, f"the few-shot pool of task '{task.name}'")
    else:
        pool = docs
    if settings.limit is not None and settings.limit < 1:
        raise IclEvalError(f"--limit {settings.limit}: must be a positive number of examples")
    ids = fewshot.subset(task.name, settings.seed, len(docs), settings.limit)
    return PreparedTask(task, docs, source, pool, task.fewshot is None, ids)


def refuse_chat(task: TaskConfig, settings: Settings) -> None:
    """A kind whose prompts cannot be conversations (a document's perplexity) refuses --chat-template."""
    if settings.chat is not None and not kind_of(task.output_type, task.path).takes_turns:
        raise IclEvalError(f"--chat-template: task '{task.name}' ({task.output_type}) scores whole documents, which have no turns to put a chat template around; run it without --chat-template")


def prepare_all(tasks: list[TaskConfig], settings: Settings, shots_for: dict[str, tuple[int, ...]] | None = None) -> list[PreparedTask]:
    """Every task's data, checked as far as it can be without a model, so a bad input costs no load time.

    Data files found and readable, the few-shot pool large enough for the largest K, every evaluated
    document renders (renders are kept, so this is work the run needs anyway)."""
    if settings.fewshot_mode not in fewshot.FEWSHOT_MODES:
        raise IclEvalError(f"--fewshot-mode {settings.fewshot_mode}: choose one of {', '.join(fewshot.FEWSHOT_MODES)}")
    prepared = []
    for task in tasks:
        shots = (shots_for or {}).get(task.name, settings.shots)
        most = kind_of(task.output_type, task.path).max_shots
        if most is not None and max(shots) > most:
            raise IclEvalError(f"--shots {max(shots)}: task '{task.name}' ({task.output_type}) takes at most {most} demonstrations; run it with --shots {most}")
        refuse_chat(task, settings)
        prep = prepare(task, settings)
        prep.shots = tuple(shots)
        fewshot.draw(task.name, settings.seed, prep.doc_ids[0], max(shots), len(prep.pool), prep.same_split, prep.same_group(prep.doc_ids[0]))  # fail fast on K
        for doc_id in prep.doc_ids:
            prep.example(doc_id)
        prepared.append(prep)
    return prepared


class NoContextLimit:
    """A stand-in model for building prompts without one (`icl-eval prompt`, tests): nothing is ever dropped."""

    max_length = 10**9

    def count_tokens(self, text: str) -> int:
        return 0


def _fits(model: Model, context: str, continuation: str, extra: int) -> bool:
    """Whether context + continuation (+ extra generated tokens) fit; a byte count bounds the token count cheaply."""
    budget = model.max_length + 1 - extra  # the last token is only a target, never an input
    if len((context + continuation).encode()) + 1 <= budget:
        return True
    return model.count_tokens(context) + model.count_tokens(continuation) <= budget


def build_prompt(
    prep: PreparedTask, doc_id: int, k: int, seed: int, model: Model, extra_tokens: int = 0, fewshot_mode: str = "per_example",
    chat: ChatFormat | None = None,
) -> Prompt:
    """The prompt for one example at K shots; whole demonstrations drop from the front until it fits.

    With `chat`, each context is the conversation of the same pieces rendered by the chat template, and each
    continuation loses its target delimiter (icl_eval/chat.py)."""
    task, kind = prep.task, prep.kind
    draw = fewshot.draw_fixed if fewshot_mode == "fixed" else fewshot.draw
    ids = draw(task.name, seed, doc_id, k, len(prep.pool), prep.same_split, prep.same_group(doc_id))
    query = prep.example(doc_id)
    demos = [prep.example(i, from_pool=True) for i in ids]
    description = description_for(task, k)
    # The query's own (context, continuation) pairs with nothing before them: the user's last turn in chat mode.
    bare = kind.pairs(task, "", query, k) if chat is not None else []
    rendered: dict[tuple[int, str], str] = {}

    def chat_context(n: int, text: str) -> str:
        if (n, text) not in rendered:  # candidates sharing one query render it once
            rendered[n, text] = chat.context(description, demos[n:], text, task.fewshot_delimiter, task.target_delimiter)
        return rendered[n, text]

    def pairs_after_dropping(n: int) -> list[tuple[str, str]]:
        if chat is not None:
            return [(chat_context(n, c), chat_continuation(t, task.target_delimiter)) for c, t in bare]
        # assemble() with an empty query is everything before the query: description and demonstrations.
        prefix = assemble(description, demos[n:], "", task.fewshot_delimiter, task.target_delimiter)
        return kind.pairs(task, prefix, query, k)

    def fits(n: int) -> bool:
        if n == len(demos):
            return True  # no demonstrations left to drop: the backend left-truncates if it must
        longest = max(pairs_after_dropping(n), key=lambda pair: len(pair[0]) + len(pair[1]))
        return _fits(model, *longest, extra_tokens)

    # The fewest front demonstrations to drop. Dropping more only shortens the prompt, so bisect: a 32-shot
    # prompt far over the context costs ~6 tokenizations instead of one per dropped demonstration.
    low, high = 0, len(demos)
    if fits(0):
        high = 0  # the usual case: the whole prompt fits
    else:
        low = 1
    while low < high:
        mid = (low + high) // 2
        if fits(mid):
            high = mid
        else:
            low = mid + 1
    dropped = low
    pairs = pairs_after_dropping(dropped)
    if chat is None:
        context, target = kind.gold_pair(task, query, pairs)
    else:  # the kind picks its gold from the bare pairs, so a delimiter is dropped exactly once
        bare_context, bare_target = kind.gold_pair(task, query, bare)
        context, target = chat_context(dropped, bare_context), chat_continuation(bare_target, task.target_delimiter)
    return Prompt(doc_id, tuple(ids[dropped:]), context, target, dropped, tuple(pairs))


def _progress_bar(total: int, desc: str) -> tuple[tqdm, Callable[[int, int], None]]:
    bar = tqdm(total=total, desc=desc, unit="req", dynamic_ncols=True, leave=False)
    start = time.perf_counter()
    tokens = [0]

    def update(n_requests: int, n_tokens: int) -> None:
        tokens[0] += n_tokens
        bar.set_postfix_str(f"{tokens[0] / max(time.perf_counter() - start, 1e-9):,.0f} tok/s", refresh=False)
        bar.update(n_requests)

    return bar, update


@dataclass
class TaskRun:
    """One task at one shot count: its records, per-example logs, truncation and cache counts."""

    records: list[Record]
    samples: list[SampleLog]
    truncation: dict[str, int]
    cache: dict[str, int]


def task_key(task: TaskConfig, chat: ChatFormat | None = None) -> str:
    """What every request of a task carries: the response cache keys on it (config and template hash, and the
    chat format when prompts are conversations)."""
    plain = f"{task.config_hash()}:{template_hash(task)}"
    return plain if chat is None else f"{plain}:{chat.key()}"


def _ask(prep: PreparedTask, k: int, model: Model, settings: Settings) -> tuple[list[Prompt], list[list[Result]], dict[str, int]]:
    """Prompts for one task at K shots, and per prompt the results of its requests (one backend call)."""
    task, kind = prep.task, prep.kind
    prompts = [build_prompt(prep, d, k, settings.seed, model, kind.extra_tokens(task), settings.fewshot_mode, settings.chat) for d in prep.doc_ids]
    key = task_key(task, settings.chat)
    asked: list[list[Request]] = [kind.requests(task, key, p, prep.example(p.doc_id)) for p in prompts]
    flat = [r for rs in asked for r in rs]
    bar, progress = _progress_bar(len(set(flat)), f"{task.name} {k}-shot")
    try:
        answers = call_model(model, flat, progress)
    finally:
        bar.close()
    per_prompt, at = [], 0
    for rs in asked:
        per_prompt.append(answers[at : at + len(rs)])
        at += len(rs)
    distinct = dict(zip(flat, answers))  # identical requests were asked once: count them once
    hits = sum(bool(getattr(r, "cached", False)) for r in distinct.values())
    return prompts, per_prompt, {"hits": hits, "misses": len(distinct) - hits}


def _left_truncated(results: list[Result]) -> bool:
    return any(getattr(r, "left_truncated", False) for r in results)


def _sample_log(prep: PreparedTask, k: int, p: Prompt, results: list[Result]) -> SampleLog:
    """What the model saw and answered for one example, in full: a reader needs nothing else. No metrics yet."""
    fields, finite = prep.kind.log(prep.task, p, prep.example(p.doc_id), results)
    # NaN/inf logits: flagged in the log, left out of every metric rather than scored as garbage.
    return SampleLog(
        prep.task.name, k, p.doc_id, list(p.fewshot_ids), prompt_hash(p.context, p.target), p.context, p.target, fields,
        left_truncated=_left_truncated(results), nonfinite=not finite,
    )


def score_task(
    prep: PreparedTask, k: int, model: Model, settings: Settings, write_samples: Callable[[list[SampleLog]], object] | None = None,
) -> TaskRun:
    """One task at K shots: ask, log, let the kind score, aggregate.

    write_samples gets the logs once they are scored and before the aggregation, which can fail on its own;
    if scoring an example fails, it gets them as they are (what the model answered, metrics missing)."""
    task = prep.task
    prompts, results, cache = _ask(prep, k, model, settings)
    samples = [_sample_log(prep, k, p, r) for p, r in zip(prompts, results)]
    items: dict[str, list] = {m: [] for m in task.metrics}
    try:
        queries = [prep.example(p.doc_id) for p in prompts]
        for sample, per in zip(samples, prep.kind.score(task, queries, results, samples)):
            if per is None:
                continue
            sample.metrics = {metrics.item_field(m): v for m, v in per.items()}  # a perplexity item is a log-likelihood
            for m, v in per.items():
                items[m].append(v)
    finally:
        if write_samples is not None:
            write_samples(samples)
    nonfinite = sum(s.nonfinite for s in samples)
    records = [Record(task.name, k, m, *metrics.aggregate(m, items[m]), len(prompts) - nonfinite) for m in task.metrics]
    truncation = {
        "demos_dropped": sum(p.demos_dropped > 0 for p in prompts),
        "left_truncated": sum(_left_truncated(r) for r in results),
        "nonfinite": nonfinite,
    }
    return TaskRun(records, samples, truncation, cache)


SamplesCallback = Callable[[str, int, list[SampleLog]], object]  # (task name, shots, sample logs)


def evaluate(
    model: Model, prepared: list[PreparedTask], settings: Settings, on_samples: SamplesCallback | None = None,
    echo: Callable[[str], None] = lambda _: None, run_id: str | None = None,
) -> RunResult:
    """Every task at every shot count with one loaded model, on data prepared once per task (prepare_all).

    Returns the complete result, model and settings blocks included, and writes nothing: `on_samples` gets
    each task/shot's sample logs as soon as they are scored (the CLI writes them, so a crash keeps them)."""
    result = RunResult(run_id=run_id or new_run_id(), started_at=now(), model=model.describe(), settings=_settings_block(model, prepared, settings))
    for prep in prepared:
        task = prep.task
        subset = f"a seeded random subset of {len(prep.doc_ids)} of {len(prep.docs)} examples (--limit, seed {settings.seed})" if settings.limit and settings.limit < len(prep.docs) else f"all {len(prep.docs)} examples"
        echo(f"{task.name}: {subset} from {prep.source}")
        signatures = {m: metrics.sacrebleu_signature(m) for m in task.metrics if metrics.METRICS[m].corpus}
        result.tasks[task.name] = TaskSummary(
            task.config_hash(), template_hash(task), task.output_type, len(prep.docs), len(prep.doc_ids), prep.source,
            sacrebleu=signatures or None, cache={} if result.settings.get("cache") else None,  # hits and misses, with a cache
        )
    for prep in prepared:
        info = result.tasks[prep.task.name]
        for k in prep.shots or settings.shots:
            write = (lambda samples, name=prep.task.name, k=k: on_samples(name, k, samples)) if settings.log_samples and on_samples else None
            started = time.perf_counter()
            try:
                run = score_task(prep, k, model, settings, write)
            except IclEvalError as e:  # the backend knows requests, not tasks: say which task and shot count failed
                raise IclEvalError(f"task '{prep.task.name}' ({prep.task.path}), {k}-shot: {e}") from None
            result.records.extend(run.records)
            info.truncation[str(k)] = run.truncation
            info.seconds[str(k)] = round(time.perf_counter() - started, 3)
            if info.cache is not None:
                info.cache[str(k)] = run.cache
    result.finished_at = now()
    return result


def _settings_block(model: Model, prepared: list[PreparedTask], settings: Settings) -> dict[str, Any]:
    block: dict[str, Any] = {
        "tasks": [p.task.name for p in prepared], "shots": list(settings.shots), "seed": settings.seed, "limit": settings.limit,
        "fewshot_mode": settings.fewshot_mode, "data_dir": settings.data_dir, "processes": 1, "cache": None,
        "chat_template": None if settings.chat is None else settings.chat.describe(),  # None: plain GPT-3 prompts
    }
    if any(p.shots and p.shots != settings.shots for p in prepared):  # --shots fewshot: each task's own K
        block["shots_per_task"] = {p.task.name: list(p.shots or settings.shots) for p in prepared}
    block.update(model.settings())  # the backend's and its wrappers': batch size, BOS policy, cache, processes
    return block

"""One evaluation run: for each task and shot count, build prompts, ask the model, score, and log."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tqdm import tqdm

from icl_eval import fewshot, metrics
from icl_eval.data import load_source
from icl_eval.errors import IclEvalError
from icl_eval.prompts import Example, assemble, description_for, prompt_hash, query_input, render, template_hash
from icl_eval.requests import GenerationRequest, LoglikelihoodRequest, LoglikelihoodResult
from icl_eval.results import Record, RunResult, RunWriter, now
from icl_eval.task_config import TaskConfig


class Model(Protocol):
    max_length: int

    def count_tokens(self, text: str) -> int: ...
    def loglikelihood(self, requests, progress=None, on_result=None): ...
    def generate(self, requests, progress=None, on_result=None): ...


@dataclass(frozen=True)
class Settings:
    shots: tuple[int, ...] = (0,)
    seed: int = 1234
    limit: int | None = None
    data_dir: str | None = None
    log_samples: bool = True
    fewshot_mode: str = "per_example"  # or "fixed": one seeded demonstration set per task and K for every example


@dataclass
class PreparedTask:
    """A task's data, loaded once and shared by every shot count."""

    task: TaskConfig
    docs: list[dict]
    source: str
    pool: list[dict]  # the demonstration pool
    same_split: bool  # the pool is the eval split itself, so the example must be excluded
    doc_ids: list[int]  # the documents evaluated (all, or the --limit subset)
    _rendered: dict[tuple[bool, int], Example] = field(default_factory=dict)

    def example(self, doc_id: int, from_pool: bool = False) -> Example:
        key = (from_pool and not self.same_split, doc_id)
        if key not in self._rendered:
            docs = self.pool if key[0] else self.docs
            self._rendered[key] = render(self.task, docs[doc_id], doc_id)
        return self._rendered[key]


@dataclass(frozen=True)
class Prompt:
    doc_id: int
    fewshot_ids: tuple[int, ...]
    context: str
    target: str  # the gold continuation, target delimiter included
    demos_dropped: int  # demonstrations removed from the front to fit the model's context
    # (context, continuation) per candidate of a multiple-choice example; (context, target) otherwise.
    requests: tuple[tuple[str, str], ...] = ()


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


def prepare_all(tasks: list[TaskConfig], settings: Settings) -> list[PreparedTask]:
    """Every task's data, checked as far as it can be without a model, so a bad input costs no load time.

    Data files found and readable, the few-shot pool large enough for the largest K, every evaluated
    document renders (renders are kept, so this is work the run needs anyway)."""
    if settings.fewshot_mode not in fewshot.FEWSHOT_MODES:
        raise IclEvalError(f"--fewshot-mode {settings.fewshot_mode}: choose one of {', '.join(fewshot.FEWSHOT_MODES)}")
    prepared = []
    for task in tasks:
        prep = prepare(task, settings)
        fewshot.draw(task.name, settings.seed, prep.doc_ids[0], max(settings.shots), len(prep.pool), prep.same_split)  # fail fast on K
        for doc_id in prep.doc_ids:
            prep.example(doc_id)
        prepared.append(prep)
    return prepared


def _fits(model: Model, context: str, continuation: str, extra: int) -> bool:
    """Whether context + continuation (+ extra generated tokens) fit; a byte count bounds the token count cheaply."""
    budget = model.max_length + 1 - extra  # the last token is only a target, never an input
    if len((context + continuation).encode()) + 1 <= budget:
        return True
    return model.count_tokens(context) + model.count_tokens(continuation) <= budget


def request_pairs(task: TaskConfig, prefix: str, query: Example, k: int) -> list[tuple[str, str]]:
    """(context, continuation) pairs of one example after the demonstrations' prefix.

    Full multiple choice: one context string shared by every candidate (the backend encodes it once);
    partial: each option closes its own context and the shared target is scored."""
    delim = task.target_delimiter
    if task.output_type == "multiple_choice":
        if task.scoring == "partial":
            return [(prefix + c, delim + query.target) for c in query.choices]
        context = prefix + query.input
        return [(context, delim + c) for c in query.choices]
    return [(prefix + query_input(query, k), delim + query.target)]


def build_prompt(prep: PreparedTask, doc_id: int, k: int, seed: int, model: Model, extra_tokens: int = 0, fewshot_mode: str = "per_example") -> Prompt:
    """The prompt for one example at K shots; whole demonstrations drop from the front until it fits."""
    task = prep.task
    draw = fewshot.draw_fixed if fewshot_mode == "fixed" else fewshot.draw
    ids = draw(task.name, seed, doc_id, k, len(prep.pool), prep.same_split)
    query = prep.example(doc_id)
    demos = [prep.example(i, from_pool=True) for i in ids]
    description = description_for(task, k)

    def pairs_after_dropping(n: int) -> list[tuple[str, str]]:
        # assemble() with an empty query is everything before the query: description and demonstrations.
        prefix = assemble(description, demos[n:], "", task.fewshot_delimiter, task.target_delimiter)
        return request_pairs(task, prefix, query, k)

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
    if task.output_type == "multiple_choice":
        context, target = pairs[query.gold]
    else:
        context, target = pairs[0]
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


def _request_log_likelihoods(task: TaskConfig, prompts: list[Prompt], model: Model, progress) -> tuple[list, list | None]:
    """Per prompt, its candidates' results; and, for acc_uncond, each candidate's result after the neutral context.

    One flat call so the backend batches everything together; unconditional requests are deduplicated (the same
    answer text after the same neutral context is one request)."""
    flat = [LoglikelihoodRequest(c, t) for p in prompts for c, t in p.requests]
    uncond_index: dict[str, int] = {}
    if "acc_uncond" in task.metrics:
        for p in prompts:
            for _, cont in p.requests:
                uncond_index.setdefault(cont, len(uncond_index))
    uncond_reqs = [LoglikelihoodRequest(task.uncond_context, cont) for cont in uncond_index]
    outs = model.loglikelihood(flat + uncond_reqs, progress)
    per_prompt, at = [], 0
    for p in prompts:
        per_prompt.append(outs[at : at + len(p.requests)])
        at += len(p.requests)
    if not uncond_index:
        return per_prompt, None
    uncond_out = outs[len(flat):]
    return per_prompt, [[uncond_out[uncond_index[cont]] for _, cont in p.requests] for p in prompts]


def _candidate_log(context: str | None, continuation: str, out: LoglikelihoodResult, uncond: LoglikelihoodResult | None) -> dict[str, Any]:
    """One candidate as scored: `text` is the exact continuation (target delimiter included); `context` only
    where candidates differ in it (partial scoring)."""
    entry: dict[str, Any] = {} if context is None else {"context": context}
    entry.update(text=continuation, loglikelihood=out.loglikelihood, n_tokens=out.n_tokens, n_chars=out.n_chars, is_greedy=out.is_greedy)
    if uncond is not None:
        entry["uncond_loglikelihood"] = uncond.loglikelihood
    return entry


def _ask(prep: PreparedTask, k: int, model: Model, settings: Settings) -> tuple[list[Prompt], list, list | None]:
    """Prompts for one task at K shots and the model's results for them (with acc_uncond's, when asked)."""
    task = prep.task
    extra = task.max_new_tokens if task.output_type == "generate" else 0
    prompts = [build_prompt(prep, d, k, settings.seed, model, extra, settings.fewshot_mode) for d in prep.doc_ids]
    n_requests = sum(len(p.requests) for p in prompts)
    if "acc_uncond" in task.metrics:  # plus one unconditional request per distinct continuation
        n_requests += len({cont for p in prompts for _, cont in p.requests})
    bar, progress = _progress_bar(n_requests, f"{task.name} {k}-shot")
    uncond = None
    try:
        if task.output_type == "loglikelihood":
            outs = model.loglikelihood([LoglikelihoodRequest(p.context, p.target) for p in prompts], progress)
        elif task.output_type == "generate":
            outs = model.generate([GenerationRequest(p.context, task.until, task.max_new_tokens) for p in prompts], progress)
        elif task.output_type == "multiple_choice":
            outs, uncond = _request_log_likelihoods(task, prompts, model, progress)
        else:
            raise IclEvalError(f"{task.path}: output_type '{task.output_type}' is not supported by this version")
    finally:
        bar.close()
    return prompts, outs, uncond


def _sample_log(prep: PreparedTask, k: int, p: Prompt, out, uncond: list | None) -> dict[str, Any]:
    """What the model saw and answered for one example, in full: a reader needs nothing else. No metrics yet."""
    task = prep.task
    sample: dict[str, Any] = {
        "task": task.name, "shots": k, "doc_id": p.doc_id, "fewshot_ids": list(p.fewshot_ids),
        "prompt_hash": prompt_hash(p.context, p.target), "context": p.context, "target": p.target,
    }
    if task.output_type == "loglikelihood":
        sample.update(loglikelihood=out.loglikelihood, n_tokens=out.n_tokens, is_greedy=out.is_greedy)
        finite = out.finite
    elif task.output_type == "multiple_choice":
        unc = uncond if uncond is not None else [None] * len(out)
        shared = len({c for c, _ in p.requests}) == 1  # full scoring: one context for every candidate, logged once
        sample["candidates"] = [_candidate_log(None if shared else c, t, o, u) for (c, t), o, u in zip(p.requests, out, unc)]
        sample["gold"] = prep.example(p.doc_id).gold
        finite = all(o.finite for o in out) and all(u is None or u.finite for u in unc)
    else:
        sample.update(
            until=list(task.until), max_new_tokens=task.max_new_tokens,
            generation_raw=out.raw, generation=out.text.strip(), references=list(prep.example(p.doc_id).references),
        )
        finite = True
    if any(getattr(o, "left_truncated", False) for o in _candidates(out)):
        sample["left_truncated"] = True  # the model saw the context above minus tokens cut from its front
    if not finite:
        # NaN/inf logits: flagged in the log, left out of every metric rather than scored as garbage.
        sample["nonfinite"] = True
        sample["metrics"] = {}
    return sample


def _score_samples(prep: PreparedTask, outs: list, uncond: list | None, samples: list[dict[str, Any]]) -> dict[str, list]:
    """Each finite example's metric items, added to its sample log; the items per metric, for aggregation."""
    task = prep.task
    items: dict[str, list] = {m: [] for m in task.metrics}
    if task.output_type == "generate":
        predictions = [s["generation"] for s in samples]
        references = [s["references"] for s in samples]
        per_metric = {m: metrics.generation_items(m, predictions, references, task.normalizer) for m in task.metrics}
    for i, (sample, out) in enumerate(zip(samples, outs)):
        if sample.get("nonfinite"):
            continue
        if task.output_type == "loglikelihood":
            per = {m: metrics.loglikelihood_item(m, out) for m in task.metrics}
        elif task.output_type == "multiple_choice":
            query = prep.example(sample["doc_id"])
            preds = metrics.choice_predictions(out, query.choices, uncond[i] if uncond is not None else None)
            sample["predictions"] = {m: preds[m] for m in task.metrics}
            per = {m: float(preds[m] == query.gold) for m in task.metrics}
        else:
            per = {m: per_metric[m][i] for m in task.metrics}
        sample["metrics"] = {metrics.item_field(m): v for m, v in per.items()}  # a perplexity item is a log-likelihood
        for m, v in per.items():
            items[m].append(v)
    return items


def score_task(
    prep: PreparedTask, k: int, model: Model, settings: Settings, write_samples: Callable[[list[dict[str, Any]]], object] | None = None,
) -> tuple[list[Record], list[dict[str, Any]], dict[str, int]]:
    """Records, per-example sample logs and truncation counts for one task at K shots.

    write_samples gets the logs once they are scored and before the aggregation, which can fail on its own;
    if scoring an example fails, it gets them as they are (what the model answered, metrics missing)."""
    task = prep.task
    prompts, outs, uncond = _ask(prep, k, model, settings)
    samples = [_sample_log(prep, k, p, out, uncond[i] if uncond is not None else None) for i, (p, out) in enumerate(zip(prompts, outs))]
    try:
        items = _score_samples(prep, outs, uncond, samples)
    finally:
        if write_samples is not None:
            write_samples(samples)
    nonfinite = sum(bool(s.get("nonfinite")) for s in samples)
    n = len(prompts) - nonfinite
    records = [Record(task.name, k, m, *metrics.aggregate(m, items[m]), n) for m in task.metrics]
    counts = {
        "demos_dropped": sum(p.demos_dropped > 0 for p in prompts),
        "left_truncated": sum(any(getattr(o, "left_truncated", False) for o in _candidates(x)) for x in outs),
        "nonfinite": nonfinite,
    }
    return records, samples, counts


def _candidates(out) -> list:
    """A multiple-choice example's results, or a single result as a one-item list."""
    return list(out) if isinstance(out, (list, tuple)) else [out]


def evaluate(model: Model, prepared: list[PreparedTask], settings: Settings, writer: RunWriter, result: RunResult, echo: Callable[[str], None] = print) -> RunResult:
    """Every task at every shot count with one loaded model, on data prepared once per task (prepare_all)."""
    for prep in prepared:
        task = prep.task
        subset = f"a seeded random subset of {len(prep.doc_ids)} of {len(prep.docs)} examples (--limit, seed {settings.seed})" if settings.limit and settings.limit < len(prep.docs) else f"all {len(prep.docs)} examples"
        echo(f"{task.name}: {subset} from {prep.source}")
        result.tasks[task.name] = {
            "config_hash": task.config_hash(), "template_hash": template_hash(task), "output_type": task.output_type,
            "n_docs": len(prep.docs), "n_evaluated": len(prep.doc_ids), "data_source": prep.source, "truncation": {},
        }
        signatures = {m: metrics.sacrebleu_signature(m) for m in task.metrics if metrics.METRICS[m].corpus}
        if signatures:
            result.tasks[task.name]["sacrebleu"] = signatures
    for prep in prepared:
        info = result.tasks[prep.task.name]
        for k in settings.shots:
            begin_task = getattr(model, "begin_task", None)  # a response cache keys its entries on the task
            stats = begin_task(f"{info['config_hash']}:{info['template_hash']}") if begin_task else None
            write = (lambda samples, name=prep.task.name, k=k: writer.write_samples(name, k, samples)) if settings.log_samples else None
            try:
                records, samples, counts = score_task(prep, k, model, settings, write)
            except IclEvalError as e:  # the backend knows requests, not tasks: say which task and shot count failed
                raise IclEvalError(f"task '{prep.task.name}' ({prep.task.path}), {k}-shot: {e}") from None
            result.records.extend(records)
            result.tasks[prep.task.name]["truncation"][str(k)] = counts
            if stats is not None:
                info.setdefault("cache", {})[str(k)] = {"hits": stats.hits, "misses": stats.misses}
    result.finished_at = now()
    writer.write_results(result)
    return result

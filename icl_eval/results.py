"""Run outputs on disk: results.json (metadata + flat records) and one samples file per task and shot count.

Every file is written to a temporary name and renamed, so an interrupted run never leaves half a file.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from icl_eval.errors import IclEvalError


RESULTS_NAME = "results.json"
SAMPLES_DIR = "samples"
_SAMPLES_FILE = re.compile(r"^(?P<task>.+)_(?P<shots>\d+)shot\.jsonl$")


def samples_name(task: str, shots: int) -> str:
    """The one spelling of a samples file's name; the writer and every reader use it."""
    return f"{task}_{shots}shot.jsonl"


def samples_path(run_dir: str | Path, task: str, shots: int) -> Path:
    return Path(run_dir) / SAMPLES_DIR / samples_name(task, shots)


def _number(x: Any, where: str, path: Path) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        raise IclEvalError(f"{path}: '{where}' must be a number, got {x!r}; is this a results.json written by `icl-eval run`?") from None


@dataclass(frozen=True)
class Record:
    task: str
    shots: int
    metric: str
    value: float
    stderr: float | None
    n: int | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], path: Path = Path(RESULTS_NAME), where: str = "record") -> Record:
        stderr = data.get("stderr")
        return cls(
            task=str(data["task"]), shots=int(_number(data["shots"], f"{where}.shots", path)), metric=str(data["metric"]),
            value=_number(data["value"], f"{where}.value", path),
            stderr=_number(stderr, f"{where}.stderr", path) if stderr is not None else None, n=data.get("n"),
        )


@dataclass
class TaskSummary:
    """What results.json says about one task: which config and data were scored, and how prompts fared."""

    config_hash: str | None = None
    template_hash: str | None = None
    output_type: str | None = None  # None in results.json files written before it was recorded
    n_docs: int | None = None
    n_evaluated: int | None = None
    data_source: str | None = None
    truncation: dict[str, dict[str, int]] = field(default_factory=dict)  # str(K) -> counts (demos_dropped, ...)
    sacrebleu: dict[str, str] | None = None  # metric -> sacrebleu signature, for bleu/chrf tasks
    cache: dict[str, dict[str, int]] | None = None  # str(K) -> {hits, misses}, with --cache
    seconds: dict[str, float] = field(default_factory=dict)  # str(K) -> wall seconds (prompts, model, scoring)

    _KEYS = ("config_hash", "template_hash", "output_type", "n_docs", "n_evaluated", "data_source", "truncation")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {key: getattr(self, key) for key in self._KEYS}
        if self.sacrebleu is not None:
            out["sacrebleu"] = self.sacrebleu
        if self.cache is not None:
            out["cache"] = self.cache
        if self.seconds:
            out["seconds"] = self.seconds
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskSummary:
        known = cls._KEYS + ("sacrebleu", "cache", "seconds")
        kw = {key: data[key] for key in known if key in data}
        kw["truncation"] = kw.get("truncation") or {}
        return cls(**kw)


def _task_json(task: TaskSummary | dict[str, Any]) -> dict[str, Any]:
    # Plain dicts are still accepted: the evaluator filled them in before TaskSummary existed.
    return task.to_json() if isinstance(task, TaskSummary) else task


@dataclass
class RunResult:
    run_id: str
    started_at: str
    model: dict[str, Any]
    settings: dict[str, Any]
    tasks: dict[str, TaskSummary] = field(default_factory=dict)
    records: list[Record] = field(default_factory=list)
    finished_at: str | None = None
    environment: dict[str, Any] = field(default_factory=dict)  # provenance.environment(): versions, commit, argv
    icl_eval_version: str | None = None  # of a run read back; a new run writes this package's version

    def to_json(self) -> dict[str, Any]:
        from icl_eval import __version__

        return {
            "icl_eval_version": self.icl_eval_version or __version__,
            "run_id": self.run_id,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "model": self.model,
            "settings": self.settings,
            "environment": self.environment,
            "tasks": {name: _task_json(t) for name, t in self.tasks.items()},
            "records": [r.to_json() for r in self.records],
        }

    @classmethod
    def from_json(cls, data: Any, path: Path = Path(RESULTS_NAME)) -> RunResult:
        """A results.json's content, checked for every field a reader relies on; a missing one is named."""
        model = _field(data, "model", path)
        _field(model, "name", path, where="model.")
        raw_records = _field(data, "records", path)
        if not isinstance(raw_records, list):
            raise IclEvalError(f"{path}: 'records' must be a list; is this a results.json written by `icl-eval run`?")
        for i, rec in enumerate(raw_records):
            for key in ("task", "shots", "metric", "value"):
                _field(rec, key, path, where=f"records[{i}].")
        return cls(
            run_id=str(data.get("run_id") or path.parent.name),
            started_at=str(data.get("started_at") or ""),
            model=model,
            settings=data.get("settings") or {},
            # A task entry that is not an object says nothing usable: left out rather than refused.
            tasks={name: TaskSummary.from_json(info) for name, info in (data.get("tasks") or {}).items() if isinstance(info, dict)},
            records=[Record.from_json(rec, path, f"records[{i}]") for i, rec in enumerate(raw_records)],
            finished_at=data.get("finished_at"),
            environment=data.get("environment") or {},
            icl_eval_version=str(data.get("icl_eval_version") or "unknown"),
        )


def _field(data: Any, key: str, path: Path, where: str = "") -> Any:
    if not isinstance(data, dict) or key not in data:
        raise IclEvalError(f"{path}: missing field '{where}{key}'; is this a results.json written by `icl-eval run`?")
    return data[key]


# The fields every sample log has, in the order they are written; whatever else a line holds is its kind's own.
_SAMPLE_HEAD = ("task", "shots", "doc_id", "fewshot_ids", "prompt_hash", "context", "target")
_SAMPLE_TAIL = ("left_truncated", "nonfinite", "predictions", "metrics")


@dataclass
class SampleLog:
    """One line of samples/<task>_<K>shot.jsonl: what the model saw and answered for one example, and its items."""

    task: str
    shots: int
    doc_id: int | str
    fewshot_ids: list[int] = field(default_factory=list)
    prompt_hash: str = ""
    context: str = ""
    target: str = ""
    fields: dict[str, Any] = field(default_factory=dict)  # the kind's own (loglikelihood/n_tokens/is_greedy, candidates/gold, ...)
    left_truncated: bool = False  # the model saw the context minus tokens cut from its front
    nonfinite: bool = False  # NaN/inf scores: left out of every metric, and its metrics are {}
    predictions: dict[str, Any] | None = None  # multiple choice: the candidate each rule picked
    metrics: dict[str, Any] | None = None  # item field (metrics.item_field) -> per-example item; None = not scored

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {key: getattr(self, key) for key in _SAMPLE_HEAD}
        out["fewshot_ids"] = list(self.fewshot_ids)
        out.update(self.fields)
        if self.left_truncated:
            out["left_truncated"] = True
        if self.nonfinite:
            out["nonfinite"] = True
            out["metrics"] = {}
            return out
        if self.predictions is not None:
            out["predictions"] = self.predictions
        if self.metrics is not None:
            out["metrics"] = self.metrics
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SampleLog:
        # Lenient on the head: logs written by older versions (and hand-made ones) may lack some of it.
        return cls(
            task=data.get("task", ""), shots=data.get("shots", 0), doc_id=data.get("doc_id"),
            fewshot_ids=list(data.get("fewshot_ids") or []), prompt_hash=data.get("prompt_hash", ""),
            context=data.get("context", ""), target=data.get("target", ""),
            fields={k: v for k, v in data.items() if k not in _SAMPLE_HEAD and k not in _SAMPLE_TAIL},
            left_truncated=bool(data.get("left_truncated", False)), nonfinite=bool(data.get("nonfinite", False)),
            predictions=data.get("predictions"), metrics=data.get("metrics"),
        )

    def items(self) -> dict[str, Any]:
        """Per-example items keyed by metric name. Sample-log field names are mapped back to metrics (a perplexity
        item is logged as "loglikelihood"; logs written before that used "perplexity", and still read)."""
        from icl_eval.metrics import field_metric

        logged = self.metrics or {}
        by_metric = {f: v for f, v in logged.items() if field_metric(f) == f}
        # Renamed fields after the rest, so the current spelling wins over an old one (never both written).
        by_metric.update({field_metric(f): v for f, v in logged.items() if field_metric(f) != f})
        return by_metric


class RunReader:
    """Reads one run: its results.json and its sample logs. Every reader of run folders goes through here.

    `path` is a run folder (holding results.json) or a results file itself; the samples sit beside it."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        self.results_path = path / RESULTS_NAME if path.is_dir() else path
        self.dir = self.results_path.parent

    def result(self) -> RunResult:
        path = self.results_path
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise IclEvalError(f"{path}: not readable as JSON ({exc}); pass a results.json written by `icl-eval run`") from exc
        return RunResult.from_json(data, path)

    def samples_path(self, task: str, shots: int) -> Path:
        return samples_path(self.dir, task, shots)

    def has_samples(self, task: str, shots: int) -> bool:
        return self.samples_path(task, shots).is_file()

    def sample_files(self) -> dict[tuple[str, int], Path]:
        """(task, shots) -> samples file, for every samples file of the run."""
        folder = self.dir / SAMPLES_DIR
        found = {}
        for path in sorted(folder.iterdir()) if folder.is_dir() else ():
            m = _SAMPLES_FILE.match(path.name)
            if m and path.is_file():
                found[(m["task"], int(m["shots"]))] = path
        return found

    def samples(self, task: str, shots: int) -> list[SampleLog]:
        path = self.samples_path(task, shots)
        if not path.is_file():
            raise IclEvalError(f"{path}: no sample logs for task '{task}' at {shots} shots; run it without --no-log-samples")
        fix = "fix or remove that line, or move the file away to compare without this task's per-example logs"
        samples = []
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    data = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise IclEvalError(f"{path}:{lineno}: not valid JSON ({exc}); {fix}") from exc
                if not isinstance(data, dict) or not isinstance(data.get("metrics") or {}, dict):
                    raise IclEvalError(f"{path}:{lineno}: not a sample written by `icl-eval run` (an object with a 'metrics' object); {fix}")
                samples.append(SampleLog.from_json(data))
        return samples

    def items(self, task: str, shots: int) -> dict[str, dict[str, Any]] | None:
        """Per-example metric items of one task and shot count, keyed by doc_id and then by metric name (see
        SampleLog.items); None when not logged. The doc_id key is json.dumps(doc_id): 1 and "1" stay apart."""
        if not self.has_samples(task, shots):
            return None
        return {json.dumps(s.doc_id): s.items() for s in self.samples(task, shots)}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def _create_temp(folder: Path, name: str) -> tuple[int, Path]:
    """A new file beside the target, created with mode 0666 so the user's umask decides who may read it
    (tempfile.mkstemp's 0600 would hide results from colleagues on shared storage)."""
    while True:
        tmp = folder / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def atomic_write(path: Path, text: str) -> None:
    """Write via a temp file in the same folder and rename; on failure the old file (if any) stays intact
    and no temp file is left, whatever the failure."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temp(path.parent, path.name)
    except OSError as e:
        raise IclEvalError(f"{path}: cannot write ({e.strerror or e}); free space or choose another --output") from None
    try:
        # A path that is not valid UTF-8 (from --output, --model, ...) reaches the text as lone surrogates:
        # in JSON the replacement is the string escape \udcXX, which reads back as the same path.
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise IclEvalError(f"{path}: cannot write ({e.strerror or e}); free space or choose another --output") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class RunWriter:
    """Owns one run's folder: OUTPUT/<run-id>/results.json and samples/<task>_<K>shot.jsonl."""

    def __init__(self, output: str | Path, run_id: str) -> None:
        self.dir = Path(output) / run_id
        try:
            (self.dir / SAMPLES_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise IclEvalError(f"--output {output}: cannot create the run folder ({e.strerror}); choose a writable --output") from None
        if not os.access(self.dir, os.W_OK):
            raise IclEvalError(f"--output {output}: not writable; choose a writable --output")

    @property
    def results_path(self) -> Path:
        return self.dir / RESULTS_NAME

    def samples_path(self, task: str, shots: int) -> Path:
        """Where a task's samples go; a name that would lead outside the run folder is refused."""
        path = samples_path(self.dir, task, shots)
        run_dir = self.dir.resolve()
        if not path.resolve().is_relative_to(run_dir):
            raise IclEvalError(f"task '{task}': its samples file {path} would lie outside the run folder {run_dir}; rename the task (letters, digits, '_', '-', '.')")
        return path

    def write_samples(self, task: str, shots: int, samples: list[SampleLog] | list[dict[str, Any]]) -> Path:
        """One line per example; plain dicts (the evaluator's older form) are written as they are."""
        path = self.samples_path(task, shots)
        lines = (s.to_json() if isinstance(s, SampleLog) else s for s in samples)
        atomic_write(path, "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in lines))
        return path

    def write_results(self, result: RunResult) -> Path:
        atomic_write(self.results_path, json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n")
        return self.results_path

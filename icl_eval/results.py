"""Run outputs on disk: results.json (metadata + flat records) and one samples file per task and shot count.

Every file is written to a temporary name and renamed, so an interrupted run never leaves half a file.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from icl_eval.errors import IclEvalError


@dataclass(frozen=True)
class Record:
    task: str
    shots: int
    metric: str
    value: float
    stderr: float | None
    n: int


@dataclass
class RunResult:
    run_id: str
    started_at: str
    model: dict[str, Any]
    settings: dict[str, Any]
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    records: list[Record] = field(default_factory=list)
    finished_at: str | None = None
    environment: dict[str, Any] = field(default_factory=dict)  # provenance.environment(): versions, commit, argv

    def to_json(self) -> dict[str, Any]:
        from icl_eval import __version__

        return {
            "icl_eval_version": __version__,
            "run_id": self.run_id,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "model": self.model,
            "settings": self.settings,
            "environment": self.environment,
            "tasks": self.tasks,
            "records": [asdict(r) for r in self.records],
        }


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
            (self.dir / "samples").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise IclEvalError(f"--output {output}: cannot create the run folder ({e.strerror}); choose a writable --output") from None
        if not os.access(self.dir, os.W_OK):
            raise IclEvalError(f"--output {output}: not writable; choose a writable --output")

    @property
    def results_path(self) -> Path:
        return self.dir / "results.json"

    def samples_path(self, task: str, shots: int) -> Path:
        """Where a task's samples go; a name that would lead outside the run folder is refused."""
        path = self.dir / "samples" / f"{task}_{shots}shot.jsonl"
        run_dir = self.dir.resolve()
        if not path.resolve().is_relative_to(run_dir):
            raise IclEvalError(f"task '{task}': its samples file {path} would lie outside the run folder {run_dir}; rename the task (letters, digits, '_', '-', '.')")
        return path

    def write_samples(self, task: str, shots: int, samples: list[dict[str, Any]]) -> Path:
        path = self.samples_path(task, shots)
        atomic_write(path, "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
        return path

    def write_results(self, result: RunResult) -> Path:
        atomic_write(self.results_path, json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n")
        return self.results_path

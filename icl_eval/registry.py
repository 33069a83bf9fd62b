"""Finding tasks: the built-in tasks/ folder, user folders (--include-path) and direct YAML paths."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path

from icl_eval.errors import IclEvalError
from icl_eval.task_config import TaskConfig, load_task_file

_PACKAGE = Path(__file__).resolve().parent


def builtin_dir(name: str) -> Path:
    """tasks/ or prompts/: inside the installed package (wheel), else at the source checkout's root."""
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise IclEvalError(f"built-in folder '{name}/' not found next to {_PACKAGE}; reinstall icl-eval")


def _task_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.y*ml") if p.suffix in (".yaml", ".yml"))


def discover(include_paths: Sequence[str] = ()) -> dict[str, TaskConfig]:
    """Every task by name; a user folder's task shadows a built-in of the same name."""
    folders = [builtin_dir("tasks")]
    for inc in include_paths:
        p = Path(inc)
        if not p.is_dir():
            raise IclEvalError(f"--include-path {inc}: not a folder; give a folder holding task YAML files")
        folders.append(p)
    tasks: dict[str, TaskConfig] = {}
    for folder in folders:
        builtin = folder == folders[0]
        for path in _task_files(folder):
            prompts = builtin_dir("prompts") if builtin else None
            cfg = load_task_file(path, prompts)
            tasks[cfg.name] = cfg
    return tasks


def load_task(name_or_path: str, include_paths: Sequence[str] = ()) -> TaskConfig:
    """A task by registered name, or by path to a YAML file."""
    if name_or_path.endswith((".yaml", ".yml")):
        path = Path(name_or_path)
        if not path.is_file():
            raise IclEvalError(f"task file {name_or_path} does not exist")
        return load_task_file(path)
    tasks = discover(include_paths)
    if name_or_path not in tasks:
        close = difflib.get_close_matches(name_or_path, sorted(tasks), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise IclEvalError(f"unknown task '{name_or_path}': {hint}run `icl-eval tasks` to list tasks, or pass a YAML path / --include-path DIR")
    return tasks[name_or_path]


def load_tasks(spec: str, include_paths: Sequence[str] = ()) -> list[TaskConfig]:
    """A comma-separated --tasks value."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise IclEvalError("--tasks is empty; give task names separated by commas, e.g. --tasks arithmetic_2da,lambada")
    return [load_task(n, include_paths) for n in names]

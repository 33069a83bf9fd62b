"""Finding tasks: the built-in tasks/ folder, user folders (--include-path) and direct YAML paths."""

from __future__ import annotations

import dataclasses
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
    """Every task by name. A user folder's task may shadow a built-in of the same name (on purpose: a fixed or
    changed copy of a shipped task); two task files of one name anywhere else are refused, naming both."""
    from icl_eval import plugins

    folders = [builtin_dir("tasks")]
    origins = {folders[0].resolve(): "built-in"}
    for dist, folder in plugins.task_folders():  # installed plugins' folders, read like --include-path ones
        folders.append(folder)
        origins.setdefault(folder.resolve(), f"plugin {dist}")
    for inc in include_paths:
        p = Path(inc)
        if not p.is_dir():
            raise IclEvalError(f"--include-path {inc}: not a folder; give a folder holding task YAML files")
        folders.append(p)
        origins.setdefault(p.resolve(), f"--include-path {inc}")
    tasks: dict[str, TaskConfig] = {}
    builtin_names: set[str] = set()
    seen: set[Path] = set()
    for folder in dict.fromkeys(f.resolve() for f in folders):  # a folder given twice is read once
        builtin = folder == folders[0].resolve()
        for path in _task_files(folder):
            if path.resolve() in seen:
                continue  # the same file through two folders (one inside the other, or a link)
            seen.add(path.resolve())
            prompts = builtin_dir("prompts") if builtin else None
            cfg = dataclasses.replace(load_task_file(path, prompts), origin=origins[folder])
            other = tasks.get(cfg.name)
            if other is not None and not (cfg.name in builtin_names and not builtin):
                raise IclEvalError(f"task name '{cfg.name}' is defined twice: in {other.path} and in {path}; rename one (a task name must be unique)")
            if builtin:
                builtin_names.add(cfg.name)
            else:
                builtin_names.discard(cfg.name)  # shadowed once; a second user file of that name is a clash
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
    """A comma-separated --tasks value. A task named twice runs once (`--tasks a,a` would double its records);
    two different task files of one name are refused, since their sample files would overwrite each other."""
    names = list(dict.fromkeys(s.strip() for s in spec.split(",") if s.strip()))
    if not names:
        raise IclEvalError("--tasks is empty; give task names separated by commas, e.g. --tasks arithmetic_2da,lambada")
    tasks: dict[str, TaskConfig] = {}
    for n in names:
        cfg = load_task(n, include_paths)
        other = tasks.get(cfg.name)
        if other is None:
            tasks[cfg.name] = cfg
        elif Path(other.path).resolve() != Path(cfg.path).resolve():
            raise IclEvalError(f"--tasks names two different tasks called '{cfg.name}': {other.path} and {cfg.path}; rename one")
    return list(tasks.values())

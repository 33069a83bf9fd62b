"""Finding tasks: the built-in tasks/ folder, user folders (--include-path) and direct YAML paths."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Sequence
from pathlib import Path

from icl_eval.errors import IclEvalError
from icl_eval.task_config import GroupConfig, TaskConfig, load_file, load_task_file

_PACKAGE = Path(__file__).resolve().parent


def builtin_dir(name: str) -> Path:
    """tasks/ or prompts/: inside the installed package (wheel), else at the source checkout's root."""
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise IclEvalError(f"built-in folder '{name}/' not found next to {_PACKAGE}; reinstall icl-eval")


def _task_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.y*ml") if p.suffix in (".yaml", ".yml"))


def catalogue(include_paths: Sequence[str] = ()) -> tuple[dict[str, TaskConfig], dict[str, GroupConfig]]:
    """Every task and every group by name. A user folder's task or group may shadow a built-in of the same name
    (on purpose: a fixed or changed copy of a shipped one); two files of one name anywhere else are refused,
    naming both, and so is a group named like a task."""
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
    groups: dict[str, GroupConfig] = {}
    builtin_names: set[tuple[str, str]] = set()  # (kind, name) defined by a built-in file and not yet shadowed
    seen: set[Path] = set()
    for folder in dict.fromkeys(f.resolve() for f in folders):  # a folder given twice is read once
        builtin = folder == folders[0].resolve()
        for path in _task_files(folder):
            if path.resolve() in seen:
                continue  # the same file through two folders (one inside the other, or a link)
            seen.add(path.resolve())
            prompts = builtin_dir("prompts") if builtin else None
            cfg = load_file(path, prompts)
            if isinstance(cfg, TaskConfig):
                cfg = dataclasses.replace(cfg, origin=origins[folder])
            kind, table, others = ("group", groups, tasks) if isinstance(cfg, GroupConfig) else ("task", tasks, groups)
            other = table.get(cfg.name)
            if other is not None and not ((kind, cfg.name) in builtin_names and not builtin):
                raise IclEvalError(f"{kind} name '{cfg.name}' is defined twice: in {other.path} and in {path}; rename one (a {kind} name must be unique)")
            if cfg.name in others:
                raise IclEvalError(f"'{cfg.name}' names both a task and a group: {others[cfg.name].path} and {path}; rename one (`--tasks {cfg.name}` must mean one thing)")
            if builtin:
                builtin_names.add((kind, cfg.name))
            else:
                builtin_names.discard((kind, cfg.name))  # shadowed once; a second user file of that name is a clash
            table[cfg.name] = cfg
    return tasks, groups


def discover(include_paths: Sequence[str] = ()) -> dict[str, TaskConfig]:
    """Every task by name (groups left out); see catalogue()."""
    return catalogue(include_paths)[0]


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


def expand_group(name: str, groups: dict[str, GroupConfig], tasks: dict[str, TaskConfig], on_skip: Callable[[str], None], trail: tuple[str, ...] = ()) -> list[TaskConfig]:
    """A group's tasks in order, nested groups expanded. A member that is neither a task nor a group here is
    skipped with a line: groups list the paper's whole suite, and some of its tasks come in later versions."""
    trail = (*trail, name)
    out: list[TaskConfig] = []
    for member in groups[name].tasks:
        if member in trail:
            raise IclEvalError(f"group '{name}' ({groups[name].path}) includes '{member}', which includes it again ({' -> '.join((*trail, member))}); remove the loop")
        if member in groups:
            out += expand_group(member, groups, tasks, on_skip, trail)
        elif member in tasks:
            out.append(tasks[member])
        else:
            on_skip(f"skipped {member} (group {name}): task not available in this version of icl-eval")
    return out


def missing_data(task: TaskConfig, data_dir: str | None) -> str | None:
    """Why a task has no data here (the data loader's own message), or None when it has. A generator always
    has data, so it is not run just to check."""
    from icl_eval.data import load_source  # late: reading data pulls in datasets/pyarrow, which listing tasks does not need

    for src, what in ((task.data, f"task '{task.name}' ({task.path})"), (task.fewshot, f"the few-shot pool of task '{task.name}'")):
        if src is None or src.generator:
            continue
        try:
            load_source(src, data_dir, 0, what)
        except IclEvalError as e:
            if str(e).startswith("no data for "):
                return str(e)
            raise  # a file that is there but broken is an error, not a skip
    return None


def load_tasks(spec: str, include_paths: Sequence[str] = (), data_dir: str | None = None, on_skip: Callable[[str], None] = print) -> list[TaskConfig]:
    """A comma-separated --tasks value of task names, YAML paths and group names. A task named twice runs once
    (`--tasks a,a` would double its records); two different task files of one name are refused, since their sample
    files would overwrite each other. A task that comes only through a group and has no data (see missing_data)
    is skipped with one line through `on_skip`; a task named on its own must have data, as before."""
    names = list(dict.fromkeys(s.strip() for s in spec.split(",") if s.strip()))
    if not names:
        raise IclEvalError("--tasks is empty; give task names separated by commas, e.g. --tasks arithmetic_2da,lambada")
    groups: dict[str, GroupConfig] = {}
    known: dict[str, TaskConfig] = {}
    if not all(n.endswith((".yaml", ".yml")) for n in names):
        known, groups = catalogue(include_paths)
    chosen: list[tuple[TaskConfig, str | None]] = []  # (task, the group it came from; None when named itself)
    for n in names:
        if n in groups:
            chosen += [(cfg, n) for cfg in expand_group(n, groups, known, on_skip)]
        else:
            chosen.append((known[n] if n in known else load_task(n, include_paths), None))
    named = {cfg.name for cfg, via in chosen if via is None}
    tasks: dict[str, TaskConfig] = {}
    skipped: set[str] = set()
    for cfg, via in chosen:
        if via is not None and cfg.name not in named and cfg.name not in tasks:
            if cfg.name in skipped:
                continue
            why = missing_data(cfg, data_dir)  # before the model loads: a missing dataset costs no load time
            if why is not None:
                on_skip(f"skipped {cfg.name} (group {via}): {why}")
                skipped.add(cfg.name)
                continue
        other = tasks.get(cfg.name)
        if other is None:
            tasks[cfg.name] = cfg
        elif Path(other.path).resolve() != Path(cfg.path).resolve():
            raise IclEvalError(f"--tasks names two different tasks called '{cfg.name}': {other.path} and {cfg.path}; rename one")
    if not tasks:
        raise IclEvalError(f"--tasks {spec}: no task of it is available here (each skipped one is listed above); pass --data-dir DIR holding their data")
    return list(tasks.values())

"""Third-party plugins found through Python entry points: task folders, task kinds, metrics, model backends.

A distribution declares entry points in one of four groups (see docs/plugins.md):
  icl_eval.tasks    a folder of task YAML + templates: a str/Path attribute, or a function returning one
  icl_eval.kinds    a task kind (output type) implementation, passed through as loaded
  icl_eval.metrics  a metrics.Metric-like object (with `aggregate`), or a callable aggregate(items) -> (value, stderr)
  icl_eval.models   a backend factory (a callable)
A plugin that fails to import, or gives something of the wrong shape, is skipped with one warning line on
stderr naming it and its distribution; the other plugins keep working. Results are cached per process.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

TASKS = "icl_eval.tasks"
KINDS = "icl_eval.kinds"
METRICS = "icl_eval.metrics"
MODELS = "icl_eval.models"
GROUPS = (TASKS, KINDS, METRICS, MODELS)


@dataclass(frozen=True)
class Plugin:
    group: str
    name: str
    distribution: str
    target: str  # "module:attribute" as the entry point names it
    obj: object  # the checked object: for icl_eval.tasks, the folder's Path


@dataclass(frozen=True)
class PluginFailure:
    group: str
    name: str
    distribution: str
    target: str
    error: str

    def message(self) -> str:
        return f"plugin '{self.name}' ({self.group} = {self.target}) from distribution {self.distribution} is skipped: {self.error}"


class _Rejected(Exception):
    """The entry point loaded, but what it names has the wrong shape for its group."""


def _task_folder(obj: object) -> Path:
    if callable(obj) and not isinstance(obj, (str, os.PathLike)):
        obj = obj()
    if not isinstance(obj, (str, os.PathLike)):
        raise _Rejected(f"gave {type(obj).__name__}, not a folder path; point the entry point at a str/Path attribute or a function returning one")
    folder = Path(obj)
    if not folder.is_dir():
        raise _Rejected(f"{folder} is not a folder; the entry point must name the folder holding the plugin's task YAML files")
    return folder.resolve()


def _metric(obj: object) -> object:
    if callable(getattr(obj, "aggregate", None)) or callable(obj):
        return obj
    raise _Rejected(f"gave {type(obj).__name__}; a metric is a Metric-like object with an `aggregate` or a callable aggregate(items) -> (value, stderr)")


def _model(obj: object) -> object:
    if callable(obj):
        return obj
    raise _Rejected(f"gave {type(obj).__name__}; a model plugin is a backend factory (a callable)")


_CHECKS: dict[str, Callable[[object], object]] = {TASKS: _task_folder, KINDS: lambda obj: obj, METRICS: _metric, MODELS: _model}

_loaded: dict[str, list[Plugin]] = {}
_failed: dict[str, list[PluginFailure]] = {}
_warned: set[PluginFailure] = set()


def _distribution(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    name = getattr(dist, "name", None) if dist is not None else None
    return name or "an unknown distribution"


def _describe(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def _load(group: str) -> None:
    plugins: list[Plugin] = []
    failures: list[PluginFailure] = []
    owner: dict[str, str] = {}  # name -> distribution that provided it first
    for ep in entry_points(group=group):  # sys.path order; each distribution once (the first found)
        dist = _distribution(ep)

        def fail(error: str) -> None:
            failures.append(PluginFailure(group, ep.name, dist, ep.value, error))

        if ep.name in owner:
            fail(f"the name is already provided by distribution {owner[ep.name]}")
            continue
        try:
            obj = _CHECKS[group](ep.load())
        except _Rejected as e:
            fail(str(e))
            continue
        except (Exception, SystemExit) as e:  # a broken plugin must not stop the harness; Ctrl-C still does
            fail(f"cannot load it ({_describe(e)})")
            continue
        owner[ep.name] = dist
        plugins.append(Plugin(group, ep.name, dist, ep.value, obj))
    _loaded[group], _failed[group] = plugins, failures
    for f in failures:
        if f not in _warned:  # one line per broken plugin per process, however often the group is read
            _warned.add(f)
            print(f"icl-eval: warning: {f.message()}", file=sys.stderr)


def entries(group: str) -> list[Plugin]:
    """The group's working plugins, in sys.path order; loaded (and failures warned about) on first use."""
    if group not in GROUPS:
        raise ValueError(f"unknown plugin group {group!r}; the groups are {', '.join(GROUPS)}")
    if group not in _loaded:
        _load(group)
    return list(_loaded[group])


def load_group(group: str) -> dict[str, object]:
    """Name -> loaded object for one group (icl_eval.tasks: the folder's Path)."""
    return {p.name: p.obj for p in entries(group)}


def task_folders() -> list[tuple[str, Path]]:
    """(distribution, folder) of every task plugin: folders to read like an --include-path."""
    return [(p.distribution, p.obj) for p in entries(TASKS)]  # type: ignore[misc]


def failures() -> list[PluginFailure]:
    """Every plugin skipped, over all four groups (loading any group not loaded yet)."""
    for group in GROUPS:
        entries(group)
    return [f for group in GROUPS for f in _failed[group]]


def refresh() -> None:
    """Forget what was loaded (and warned about), so the next call scans the installed distributions again."""
    from icl_eval import kinds, metrics  # late: both read this module

    _loaded.clear()
    _failed.clear()
    _warned.clear()
    metrics.forget_plugin_metrics()
    kinds.kinds.cache_clear()

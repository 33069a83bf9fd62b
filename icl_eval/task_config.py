"""Task definitions: the YAML schema as a dataclass, loaded safely and checked field by field."""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from icl_eval.errors import IclEvalError

SCORING_MODES = ("full", "partial")

# A task's name becomes part of file names (samples/<name>_<K>shot.jsonl): no separators, no leading dot.
# Letters and digits of any script (\w), '_', '.', '-': none of them is a path separator or a control character.
NAME_PATTERN = re.compile(r"\w[\w.-]{0,99}")
NAME_RULE = "1 to 100 letters, digits, '_', '.' or '-', starting with a letter, digit or '_'"

# What one task file may cost. Real task files are a few hundred bytes; YAML aliases can make a small file
# expand to gigabytes (the "billion laughs"), which would hang the run while it hashes the config.
MAX_TASK_FILE_BYTES = 1 << 20
MAX_YAML_NODES = 100_000  # values after expanding aliases
MAX_YAML_CHARS = 4_000_000  # characters of scalars after expanding aliases
MAX_YAML_DEPTH = 64


@dataclass(frozen=True)
class DataSource:
    """Where a task's documents come from: a local file under the data root, the hub, or a generator."""

    local: str | None = None  # path relative to the data root (or absolute)
    # jsonl | json | parquet | tsv | parallel | records; inferred from the extension when None.
    # `parallel`: local names line-aligned files with braces, e.g. wmt/en-fr/newstest2014.{en,fr}.
    format: str | None = None
    columns: tuple[str, ...] = ()  # tsv: names of the columns; records: names of the lines of one record
    lines_per_record: int = 0  # records: a record is this many consecutive lines
    line_fields: dict[str, str] = field(default_factory=dict)  # extra field -> line-aligned file (e.g. labels)
    literal_fields: tuple[str, ...] = ()  # fields holding Python literals (e.g. "['a', 'b']"), parsed safely
    fields: dict[str, str] = field(default_factory=dict)  # local docs: field -> Jinja expression over the raw record
    hub_fields: dict[str, str] = field(default_factory=dict)  # hub rows: the same mapping for the hub's layout
    hub: str | None = None  # hub dataset id
    hub_name: str | None = None  # hub config name
    hub_split: str = "test"
    generator: str | None = None  # Python plugin name in icl_eval.generators, used when no data is found
    generator_args: dict[str, Any] = field(default_factory=dict)


# eq=False: hashed by identity, so compiled templates can be cached per task object.
@dataclass(frozen=True, eq=False)
class TaskConfig:
    name: str
    output_type: str
    template: str  # file in prompts/ with Jinja blocks `input` and `target`
    data: DataSource
    metrics: tuple[str, ...]
    path: str = ""  # the YAML file this came from, for error messages
    family: str = ""
    description: str = ""  # natural-language task description, prepended once to the prompt
    description_max_shots: int | None = None  # the paper dropped the description for few-shot in some tasks
    fewshot: DataSource | None = None  # the demonstration pool; None = the eval split minus the example
    # A document field: demonstrations never come from eval documents that share the example's value (a CoQA
    # story, a QuAC dialogue), whose other turns would show its question and answer.
    fewshot_group: str | None = None
    fewshot_delimiter: str = "\n\n"  # between demonstrations, and between the last one and the query
    target_delimiter: str = " "  # between an input and its target
    until: tuple[str, ...] = ("\n",)  # stop sequences for generation
    max_new_tokens: int = 32
    # Generation scoring: accepted answers (a Jinja expression yielding a list; default the target) and the
    # exact-match normaliser: answer (SQuAD: lowercase, no punctuation or articles), strip, or lower.
    references: str | None = None
    normalizer: str = "answer"
    # Multiple choice: `choices` and `gold` are Jinja expressions over the document (a field name is one).
    # full: every choice is a continuation of one shared context; partial: each choice ends its own context and
    # the shared target is scored (Winogrande). acc_uncond divides by P(choice | uncond_context).
    choices: str | None = None
    gold: str | None = None
    scoring: str = "full"
    uncond_context: str = "Answer:"
    # Rolling log-likelihood (whole documents): tokens scored per window after the first (None: the model's
    # context, no overlap), and how words are counted for word perplexity (lm_eval, or words_and_line_ends).
    rolling_stride: int | None = None
    word_count: str = "lm_eval"
    template_vars: dict[str, Any] = field(default_factory=dict)  # extra variables for the template (one template, many tasks)
    # What the n-gram check reads: document fields (names or Jinja expressions, a list) or, as before,
    # input | target | both of the rendered template (template words included).
    contamination_fields: str | tuple[str, ...] = "both"
    prompts_dir: str = ""  # where `template` is looked up first
    origin: str = ""  # where the task was found: built-in, plugin DIST, --include-path DIR (shown by `icl-eval tasks`)
    # The GPT-3 paper's few-shot K for this task (Table H.1): what `--shots fewshot` runs. It names a shot count,
    # it changes no request of a given K, so it is not part of config_hash.
    fewshot_k: int | None = None

    def config_hash(self) -> str:
        """A hash of everything that changes the requests the task makes (not where it was loaded from)."""
        d = dataclasses.asdict(self)
        d.pop("path")
        d.pop("prompts_dir")
        d.pop("origin")
        d.pop("contamination_fields")  # read only by `icl-eval contamination`, not by any request
        d.pop("fewshot_k")  # which K to run, not how a K-shot request looks
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


_DATA_KEYS = {f.name for f in dataclasses.fields(DataSource)}
_TASK_KEYS = {f.name for f in dataclasses.fields(TaskConfig)} - {"path", "prompts_dir", "origin"}
_REQUIRED = ("name", "output_type", "template", "data", "metrics")


def _suggest(key: str, options: set[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, sorted(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _check_keys(d: dict, allowed: set[str], where: str) -> None:
    for key in d:
        if key not in allowed:
            raise IclEvalError(f"{where}: unknown key '{key}'{_suggest(str(key), allowed)}; allowed keys: {', '.join(sorted(allowed))}")


def _expect(value: Any, types: type | tuple[type, ...], where: str, what: str) -> Any:
    if not isinstance(value, types) or isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise IclEvalError(f"{where}: '{what}' must be {names}, got {type(value).__name__} {value!r}")
    return value


def _data_source(raw: Any, where: str) -> DataSource:
    _expect(raw, dict, where, "data")
    _check_keys(raw, _DATA_KEYS, where)
    raw = dict(raw)
    for key in ("local", "format", "hub", "hub_name", "hub_split", "generator"):
        if key in raw and raw[key] is not None:
            _expect(raw[key], str, where, key)
    for key in ("generator_args", "line_fields", "fields", "hub_fields"):
        if key in raw:
            _expect(raw[key], dict, where, key)
    for key in ("line_fields", "fields", "hub_fields"):
        for name, value in raw.get(key, {}).items():
            _expect(value, str, where, f"{key}.{name}")
    for key in ("columns", "literal_fields"):
        if key in raw:
            raw[key] = tuple(_expect(c, str, where, key) for c in _expect(raw[key], list, where, key))
    if "lines_per_record" in raw:
        _expect(raw["lines_per_record"], int, where, "lines_per_record")
    if raw.get("format") == "records" and raw.get("lines_per_record", 0) < 1:
        raise IclEvalError(f"{where}: format 'records' needs 'lines_per_record' (how many lines make one record)")
    src = DataSource(**raw)
    if not (src.local or src.hub or src.generator):
        raise IclEvalError(f"{where}: give at least one of 'local', 'hub' or 'generator'")
    return src


def _contamination_fields(value: Any, path: str) -> str | tuple[str, ...]:
    if value in ("input", "target", "both"):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value):
        return tuple(value)
    raise IclEvalError(f"{path}: 'contamination_fields' must be a list of document fields (e.g. [question]) or one of input, target, both; got {value!r}")


def parse_task(raw: Any, path: str, prompts_dir: str = "") -> TaskConfig:
    """Check a parsed YAML mapping against the schema and build the TaskConfig."""
    if not isinstance(raw, dict):
        raise IclEvalError(f"{path}: a task file must be a YAML mapping of keys to values, got {type(raw).__name__}")
    _check_keys(raw, _TASK_KEYS, path)
    raw = dict(raw)  # contamination_fields is a string or a list: checked on its own, not with the string keys
    contamination_fields = _contamination_fields(raw.pop("contamination_fields", "both"), path)
    for key in _REQUIRED:
        if key not in raw:
            raise IclEvalError(f"{path}: missing required key '{key}'")
    kw = dict(raw)
    if isinstance(kw["name"], str) and not NAME_PATTERN.fullmatch(kw["name"]):
        raise IclEvalError(f"{path}: 'name' {kw['name']!r} is not a valid task name: use {NAME_RULE} (it names the samples files)")
    for key in ("name", "template", "family", "description", "fewshot_delimiter", "target_delimiter", "fewshot_group", "contamination_fields",
                "references", "normalizer", "choices", "gold", "scoring", "uncond_context"):
        if key in kw and (kw[key] is not None or key not in ("references", "choices", "gold")):
            _expect(kw[key], str, path, key)
    if "template_vars" in kw:
        _expect(kw["template_vars"], dict, path, "template_vars")
    if kw.get("scoring", "full") not in SCORING_MODES:
        raise IclEvalError(f"{path}: 'scoring' must be full or partial, got {kw['scoring']!r}")
    from icl_eval.metrics import METRICS, NORMALIZERS, load_plugin_metrics  # late: keeps the schema module light

    load_plugin_metrics()  # a plugin task may name a plugin metric

    if kw.get("normalizer", "answer") not in NORMALIZERS:
        raise IclEvalError(f"{path}: 'normalizer' must be one of {', '.join(NORMALIZERS)}, got {kw['normalizer']!r}{_suggest(str(kw['normalizer']), tuple(NORMALIZERS))}")
    from icl_eval.kinds import kind_of  # late: kinds build on this module's TaskConfig

    kind = kind_of(_expect(kw["output_type"], str, path, "output_type"), path)
    kw["contamination_fields"] = contamination_fields
    kw["data"] = _data_source(kw["data"], f"{path} (data)")
    if kw.get("fewshot") is not None:
        kw["fewshot"] = _data_source(kw["fewshot"], f"{path} (fewshot)")
    metrics = kw["metrics"]
    if isinstance(metrics, str):
        metrics = [metrics]
    _expect(metrics, list, path, "metrics")

    kw["metrics"] = tuple(metrics)
    until = kw.get("until", ["\n"])
    if isinstance(until, str):
        until = [until]
    _expect(until, list, path, "until")
    kw["until"] = tuple(_expect(u, str, path, "until") for u in until)
    if kw.get("fewshot_k") is not None:
        _expect(kw["fewshot_k"], int, path, "fewshot_k")
        if kw["fewshot_k"] < 0:  # 0: a zero-shot-only task (the paper's PTB)
            raise IclEvalError(f"{path}: 'fewshot_k' must be >= 0 (the paper's few-shot K, e.g. fewshot_k: 32), got {kw['fewshot_k']}")
    for key in ("max_new_tokens", "description_max_shots", "rolling_stride"):
        if kw.get(key) is not None:
            _expect(kw[key], int, path, key)
            if kw[key] < 0:
                raise IclEvalError(f"{path}: '{key}' must be >= 0")
    if "word_count" in kw:
        _expect(kw["word_count"], str, path, "word_count")
    task = TaskConfig(**kw, path=path, prompts_dir=prompts_dir)
    kind.check(task)  # what the output type itself requires (multiple choice: choices and gold, ...)
    for m in task.metrics:
        if m not in METRICS:
            raise IclEvalError(f"{path}: unknown metric '{m}'{_suggest(str(m), tuple(METRICS))}; known: {', '.join(sorted(METRICS))}")
        if task.output_type not in METRICS[m].output_types:
            fits = sorted(n for n, x in METRICS.items() if task.output_type in x.output_types)
            raise IclEvalError(f"{path}: metric '{m}' does not apply to output_type {task.output_type}; use one of {', '.join(fits)}")
    return task


def _decode(data: bytes, path: Path) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in data:
        raise IclEvalError(f"{path}: task file is UTF-16 (or holds NUL bytes); save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise IclEvalError(f"{path}: task file is not UTF-8 (byte {e.start}: {e.reason}); save it as UTF-8") from None


def _expanded_size(node: yaml.Node, path: Path, memo: dict[int, tuple[int, int]], open_nodes: set[int], depth: int) -> tuple[int, int]:
    """(values, scalar characters) of a node with every alias expanded; memoised, so a bomb costs its file size."""
    key = id(node)
    if key in memo:
        return memo[key]
    line = f":{node.start_mark.line + 1}"
    if key in open_nodes:
        raise IclEvalError(f"{path}{line}: recursive YAML alias (a value that contains itself); task files are plain data, write the value out")
    if depth > MAX_YAML_DEPTH:
        raise IclEvalError(f"{path}{line}: YAML nested deeper than {MAX_YAML_DEPTH} levels (limit icl_eval.task_config.MAX_YAML_DEPTH)")
    open_nodes.add(key)
    values, chars = 1, 0
    children = node.value if isinstance(node, yaml.SequenceNode) else [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else []
    if isinstance(node, yaml.ScalarNode):
        chars = len(node.value)
    for child in children:
        v, c = _expanded_size(child, path, memo, open_nodes, depth + 1)
        values, chars = values + v, chars + c
        if values > MAX_YAML_NODES or chars > MAX_YAML_CHARS:
            raise IclEvalError(
                f"{path}: YAML aliases expand to over {MAX_YAML_NODES:,} values or {MAX_YAML_CHARS:,} characters "
                f"(limits icl_eval.task_config.MAX_YAML_NODES/MAX_YAML_CHARS); write the values out or use fewer aliases"
            )
    open_nodes.discard(key)
    memo[key] = (values, chars)
    return values, chars


# libyaml's parser where PyYAML was built with it: reading the ~60 built-in task files was a tenth of start-up.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _yaml_error(e: yaml.YAMLError, path: Path) -> IclEvalError:
    if isinstance(e, yaml.constructor.ConstructorError) and "tag" in str(e.problem):  # e.g. !!python/object: the safe loader builds no objects
        mark = e.problem_mark
        return IclEvalError(f"{path}{f':{mark.line + 1}' if mark else ''}: YAML tag not allowed ({e.problem}); task files are plain data, remove the tag")
    mark = getattr(e, "problem_mark", None)
    line = f":{mark.line + 1}" if mark is not None else ""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return IclEvalError(f"{path}{line}: YAML syntax error: {problem}; fix the YAML at that line")


def read_yaml(path: Path) -> Any:
    """A task file's data: size, encoding and alias expansion checked before anything is built."""
    try:
        if not path.is_file():
            raise IclEvalError(f"{path}: not a regular file; a task file is a YAML text file")
        with open(path, "rb") as f:
            data = f.read(MAX_TASK_FILE_BYTES + 1)
    except OSError as e:
        raise IclEvalError(f"{path}: cannot read task file ({e.strerror})") from None
    if len(data) > MAX_TASK_FILE_BYTES:
        raise IclEvalError(f"{path}: task file is over {MAX_TASK_FILE_BYTES:,} bytes (limit icl_eval.task_config.MAX_TASK_FILE_BYTES)")
    text = _decode(data, path)
    try:
        # Compose first (parsing only, nothing is built) to measure what the aliases expand to.
        root = yaml.compose(text, Loader=_LOADER)
        if root is None:
            return None
        _expanded_size(root, path, {}, set(), 0)
        return yaml.constructor.SafeConstructor().construct_document(root)
    except yaml.YAMLError as e:
        raise _yaml_error(e, path) from None
    except RecursionError:
        raise IclEvalError(f"{path}: YAML nested too deeply to read (limit {MAX_YAML_DEPTH} levels)") from None


def load_task_file(path: Path, prompts_dir: Path | None = None) -> TaskConfig:
    """Read one task YAML with the safe loader; syntax errors name the file and line."""
    raw = read_yaml(path)
    if prompts_dir is None:
        prompts_dir = path.parent.parent / "prompts" if (path.parent.parent / "prompts").is_dir() else path.parent
    return parse_task(raw, str(path), str(prompts_dir))


@dataclass(frozen=True)
class GroupConfig:
    """A named list of tasks and groups (`--tasks NAME` runs them all); a file with a `group:` key defines one."""

    name: str
    tasks: tuple[str, ...]  # task or group names, in run order
    description: str = ""
    path: str = ""


_GROUP_KEYS = {"group", "tasks", "description"}


def is_group(raw: Any) -> bool:
    return isinstance(raw, dict) and "group" in raw


def parse_group(raw: Any, path: str) -> GroupConfig:
    """Check a group file: `group: NAME`, `tasks: [names]` (tasks or other groups), optional `description`."""
    _check_keys(raw, _GROUP_KEYS, f"{path} (a group file)")
    name = _expect(raw["group"], str, path, "group")
    if not NAME_PATTERN.fullmatch(name):
        raise IclEvalError(f"{path}: 'group' {name!r} is not a valid group name: use {NAME_RULE}")
    if "tasks" not in raw:
        raise IclEvalError(f"{path}: a group file needs 'tasks', a list of task or group names, e.g. tasks: [arithmetic_2da, lambada]")
    members = _expect(raw["tasks"], list, path, "tasks")
    if not members:
        raise IclEvalError(f"{path}: group '{name}' has an empty 'tasks' list; name at least one task or group")
    for m in members:
        _expect(m, str, path, "tasks[]")
    description = _expect(raw.get("description", ""), str, path, "description")
    return GroupConfig(name, tuple(dict.fromkeys(members)), description, path)


def load_file(path: Path, prompts_dir: Path | None = None) -> TaskConfig | GroupConfig:
    """A task file or a group file (one with a `group:` key), read once with the same safe reader."""
    raw = read_yaml(path)
    if is_group(raw):
        return parse_group(raw, str(path))
    if prompts_dir is None:
        prompts_dir = path.parent.parent / "prompts" if (path.parent.parent / "prompts").is_dir() else path.parent
    return parse_task(raw, str(path), str(prompts_dir))

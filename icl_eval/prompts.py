"""Rendering prompts: sandboxed Jinja templates for one example, and the few-shot assembly around them."""

from __future__ import annotations

import functools
import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import jinja2
from jinja2.loaders import split_template_path
from jinja2.sandbox import SecurityError

from icl_eval.errors import IclEvalError
from icl_eval.registry import builtin_dir
from icl_eval.task_config import TaskConfig
from icl_eval.template_sandbox import BoundedSandbox, LimitError, metered, render_bounded

MAX_TEMPLATE_BYTES = 1 << 20  # a prompt template is a few lines; anything this big is a mistake or an attack

# The blocks a template may define; each kind says which it requires (kinds/). An optional `input_zero_shot` block replaces `input` for the query of a zero-shot prompt (GPT-3 translation).
BLOCKS = ("input", "target")
ZERO_SHOT_BLOCK = "input_zero_shot"


def required_blocks(task: TaskConfig) -> tuple[str, ...]:
    """The blocks a task's template must define: its kind decides (multiple choice needs fewer)."""
    from icl_eval.kinds import kind_of  # late: kinds render through this module

    return kind_of(task.output_type, task.path).required_blocks(task)


@dataclass(frozen=True)
class Example:
    """One document rendered by its task's template, before any demonstrations.

    Multiple choice: `choices` are the candidate continuations (full scoring) or the candidate query inputs
    (partial scoring, each the shared input followed by one option); `input`/`target` show the gold one.
    """

    doc_id: int
    input: str
    target: str
    choices: tuple[str, ...] = ()
    gold: int | None = None
    references: tuple[str, ...] = ()  # accepted answers of a generation task
    input_zero_shot: str | None = None


def _template_dirs(task: TaskConfig) -> list[Path]:
    dirs = [Path(task.prompts_dir)] if task.prompts_dir else []
    if task.path:
        dirs.append(Path(task.path).parent)
    dirs.append(builtin_dir("prompts"))
    return dirs


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


class FolderLoader(jinja2.BaseLoader):
    """Templates and their includes from the task's own folders only, symlinks resolved: a task folder holding
    `leak -> /etc/shadow` and `{% include 'leak' %}` must not put that file into prompts and logs."""

    def __init__(self, search_path: tuple[str, ...]) -> None:
        self.search_path = search_path
        self.real = tuple(os.path.realpath(d) for d in search_path)

    def get_source(self, environment: jinja2.Environment, template: str):
        pieces = split_template_path(template)  # refuses '..'
        for folder in self.search_path:
            candidate = os.path.join(folder, *pieces)
            if not os.path.isfile(candidate):  # follows links; devices and FIFOs are not templates
                continue
            real = os.path.realpath(candidate)
            if not any(_inside(real, d) for d in self.real):
                raise IclEvalError(f"{candidate}: template '{template}' resolves to {real}, outside the task's template folders ({', '.join(self.search_path)}); templates and includes may not leave them")
            size = os.path.getsize(real)
            if size > MAX_TEMPLATE_BYTES:
                raise IclEvalError(f"{candidate}: template is {size:,} bytes, over the limit of {MAX_TEMPLATE_BYTES:,} (icl_eval.prompts.MAX_TEMPLATE_BYTES)")
            try:
                with open(real, encoding="utf-8") as f:
                    source = f.read()
            except OSError as e:
                raise IclEvalError(f"{candidate}: cannot read template ({e.strerror}); make it readable") from None
            except UnicodeDecodeError as e:
                raise IclEvalError(f"{candidate}: template is not UTF-8 (byte {e.start}: {e.reason}); save it as UTF-8") from None
            mtime = os.path.getmtime(real)
            return source, os.path.normpath(candidate), lambda: os.path.isfile(real) and os.path.getmtime(real) == mtime
        raise jinja2.TemplateNotFound(template)


@functools.lru_cache(maxsize=None)
def _environment(search_path: tuple[str, ...]) -> BoundedSandbox:
    # Sandboxed: task files are shared between labs and must not reach Python internals, nor cost unbounded
    # memory or time (template_sandbox). StrictUndefined: a misspelled field is an error, not an empty string.
    return BoundedSandbox(
        loader=FolderLoader(search_path),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


@functools.lru_cache(maxsize=None)
def load_template(task: TaskConfig) -> jinja2.Template:
    """Compiled once per task."""
    env = _environment(tuple(str(d) for d in _template_dirs(task)))
    try:
        tmpl = env.get_template(task.template)
    except jinja2.TemplateNotFound:
        dirs = ", ".join(str(d) for d in _template_dirs(task))
        raise IclEvalError(f"{task.path}: template '{task.template}' (field 'template') not found in {dirs}") from None
    except jinja2.TemplateSyntaxError as e:
        raise IclEvalError(f"{e.filename or task.template}:{e.lineno}: template syntax error: {e.message}") from None
    except RecursionError:
        raise IclEvalError(f"{task.path}: template '{task.template}' is nested too deeply to compile; simplify it") from None
    missing = [b for b in required_blocks(task) if b not in tmpl.blocks]
    if missing:
        need = " and ".join(f"{{% block {b} %}}...{{% endblock %}}" for b in required_blocks(task))
        raise IclEvalError(f"{tmpl.filename}: missing block(s) {', '.join(missing)}; define {need}")
    return tmpl


@functools.lru_cache(maxsize=None)
def compile_expression(expression: str, where: str):
    """A sandboxed Jinja expression (YAML `choices`, `gold`, `references`, data field mappings)."""
    env = _environment(())
    try:
        return env.compile_expression(expression, undefined_to_none=False)
    except jinja2.TemplateSyntaxError as e:
        raise IclEvalError(f"{where}: not a valid Jinja expression ({e.message}): {expression!r}") from None


def call_expression(fn, **variables):
    """A compiled expression's value; an expression that is just a missing name raises UndefinedError like a
    template would (compiled expressions hand back the Undefined object instead of failing)."""
    with metered():
        value = fn(**variables)
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined raises here, naming the missing field
    return value


def eval_expression(task: TaskConfig, key: str, doc: dict, doc_id: int):
    expression = getattr(task, key)
    fn = compile_expression(expression, f"{task.path} ('{key}')")
    try:
        return call_expression(fn, **task.template_vars, **doc, doc=doc, doc_id=doc_id)
    except jinja2.UndefinedError as e:
        raise IclEvalError(f"{task.path} ('{key}: {expression}'), doc {doc_id}: {e.message}; the document's fields are: {', '.join(sorted(doc))}") from None
    except SecurityError as e:
        raise IclEvalError(f"{task.path} ('{key}'): unsafe expression refused ({e})") from None
    except LimitError as e:
        raise IclEvalError(f"{task.path} ('{key}: {expression}'), doc {doc_id}: {e}") from None
    except Exception as e:  # a Python error inside the expression
        raise IclEvalError(f"{task.path} ('{key}: {expression}'), doc {doc_id}: {type(e).__name__}: {e}") from None


def string_list(task: TaskConfig, key: str, value, doc_id: int) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise IclEvalError(f"{task.path}: '{key}: {getattr(task, key)}' must give a non-empty list of strings, got {value!r} for doc {doc_id}")
    for i, v in enumerate(value):
        # A missing value would be scored as the text "None"; a list or mapping as its Python repr.
        if v is None or isinstance(v, (bool, list, tuple, dict)) or isinstance(v, float) and not math.isfinite(v):
            raise IclEvalError(f"{task.path}: '{key}: {getattr(task, key)}' gives {v!r} as item {i} for doc {doc_id}; each must be a string (or a number)")
    return tuple(str(v) for v in value)


def choice_index(task: TaskConfig, gold, n_choices: int, doc_id: int) -> int:
    """An integer index: 1.7 is not 1, True is not 1, and "2" from a CSV is 2."""
    index = None
    if isinstance(gold, int) and not isinstance(gold, bool):
        index = gold
    elif isinstance(gold, float) and math.isfinite(gold) and gold.is_integer():
        index = int(gold)
    elif isinstance(gold, str) and gold.strip().lstrip("-").isdigit():
        index = int(gold.strip())
    if index is None:
        raise IclEvalError(f"{task.path}: 'gold: {task.gold}' must give an integer choice index, got {gold!r} for doc {doc_id}")
    if not 0 <= index < n_choices:
        raise IclEvalError(f"{task.path}: 'gold: {task.gold}' gives {index} for doc {doc_id}, which has {n_choices} choices (0-based)")
    return index


def check_target(task: TaskConfig, tgt: str, doc_id: int) -> None:
    if not tgt.strip():
        where = load_template(task).filename
        raise IclEvalError(f"{where} (block 'target'), doc {doc_id}: the target rendered empty ({tgt!r}), so only the delimiter would be scored; fix the document's field or the template")


def template_hash(task: TaskConfig) -> str:
    tmpl = load_template(task)
    return hashlib.sha256(Path(tmpl.filename).read_bytes()).hexdigest()[:16]


def render_block(task: TaskConfig, block: str, doc: dict, doc_id: int) -> str:
    tmpl = load_template(task)
    if block not in tmpl.blocks:
        return ""  # optional for this output type (see required_blocks)
    try:
        ctx = tmpl.new_context({**task.template_vars, **doc, "doc": doc, "doc_id": doc_id})
        with metered():
            return render_bounded(tmpl.blocks[block](ctx))
    except IclEvalError:
        raise  # an include refused by the loader: already one line
    except LimitError as e:
        raise IclEvalError(f"{tmpl.filename} (block '{block}'), doc {doc_id}: {e}") from None
    except jinja2.UndefinedError as e:
        raise IclEvalError(f"{tmpl.filename} (block '{block}'), doc {doc_id}: {e.message}; the document's fields are: {', '.join(sorted(doc))}") from None
    except SecurityError as e:
        raise IclEvalError(f"{tmpl.filename} (block '{block}'): unsafe template operation refused ({e}); task files may not reach Python internals, use the document's fields") from None
    except jinja2.TemplateNotFound as e:
        raise IclEvalError(f"{tmpl.filename} (block '{block}'): included template '{e.name}' not found; includes are looked up in {', '.join(str(d) for d in _template_dirs(task))} only") from None
    except jinja2.TemplateError as e:
        raise IclEvalError(f"{tmpl.filename} (block '{block}'), doc {doc_id}: {e}") from None
    except Exception as e:  # a Python error inside an expression, e.g. indexing past a list's end
        raise IclEvalError(f"{tmpl.filename} (block '{block}'), doc {doc_id}: {type(e).__name__}: {e}") from None


def render_example(task: TaskConfig, doc: dict, doc_id: int = 0) -> tuple[str, str]:
    """(input, target) of one document, zero-shot."""
    return render_block(task, "input", doc, doc_id), render_block(task, "target", doc, doc_id)


def render_zero_shot(task: TaskConfig, doc: dict, doc_id: int) -> str | None:
    """The optional zero-shot form of the query (GPT-3 translation), or None when the template has none."""
    return render_block(task, ZERO_SHOT_BLOCK, doc, doc_id) if ZERO_SHOT_BLOCK in load_template(task).blocks else None


def query_input(example: Example, shots: int) -> str:
    """The query as shown after the demonstrations: a zero-shot form where the template has one."""
    return example.input_zero_shot if shots == 0 and example.input_zero_shot is not None else example.input


def description_for(task: TaskConfig, shots: int) -> str:
    if task.description_max_shots is not None and shots > task.description_max_shots:
        return ""
    return task.description


def assemble(description: str, demos: list[Example], query: str, fewshot_delimiter: str, target_delimiter: str) -> str:
    """The context the model sees: description, then demonstrations and the query joined by the delimiter."""
    shown = [d.input + target_delimiter + d.target for d in demos]
    return description + fewshot_delimiter.join(shown + [query])


Turn = dict[str, str]  # one chat message: {"role": "system" | "user" | "assistant", "content": text}
DESCRIPTION_PLACES = ("system", "user")  # a system turn of its own, or the head of the first user turn


def chat_turns(
    description: str, demos: list[Example], query: str, fewshot_delimiter: str, target_delimiter: str,
    multiturn: bool = False, description_as: str = "system",
) -> list[Turn]:
    """The conversation a chat model sees, from the same pieces as assemble(): no chat template applied yet.

    Single-turn: one user turn holding exactly what assemble() would give without the description (the
    demonstrations with their delimiters, then the query). Multi-turn: each demonstration's input as a user turn
    and its target as the assistant's answer, then the query as the last user turn; the turn boundaries stand
    where the delimiters stood. The description is a system turn, or glued to the front of the first user turn
    as the plain prompt glues it (for templates that refuse a system role)."""
    if multiturn:
        turns = [t for d in demos for t in ({"role": "user", "content": d.input}, {"role": "assistant", "content": d.target})]
        turns.append({"role": "user", "content": query})
    else:
        turns = [{"role": "user", "content": assemble("", demos, query, fewshot_delimiter, target_delimiter)}]
    if description and description_as == "system":
        turns.insert(0, {"role": "system", "content": description})
    elif description:
        turns[0] = {"role": "user", "content": description + turns[0]["content"]}
    return turns


def prompt_hash(context: str, continuation: str) -> str:
    return hashlib.sha256(f"{context}\x00{continuation}".encode()).hexdigest()[:16]

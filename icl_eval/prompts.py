"""Rendering prompts: sandboxed Jinja templates for one example, and the few-shot assembly around them."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import jinja2
from jinja2.sandbox import SandboxedEnvironment, SecurityError

from icl_eval.errors import IclEvalError
from icl_eval.registry import builtin_dir
from icl_eval.task_config import TaskConfig

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


@functools.lru_cache(maxsize=None)
def _environment(search_path: tuple[str, ...]) -> SandboxedEnvironment:
    # Sandboxed: task files are shared between labs and must not reach Python internals.
    # StrictUndefined: a misspelled field is an error, not an empty string in the prompt.
    return SandboxedEnvironment(
        loader=jinja2.FileSystemLoader(list(search_path)),
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
    except Exception as e:  # a Python error inside the expression
        raise IclEvalError(f"{task.path} ('{key}: {expression}'), doc {doc_id}: {type(e).__name__}: {e}") from None


def string_list(task: TaskConfig, key: str, value, doc_id: int) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise IclEvalError(f"{task.path}: '{key}: {getattr(task, key)}' must give a non-empty list of strings, got {value!r} for doc {doc_id}")
    return tuple(str(v) for v in value)


def template_hash(task: TaskConfig) -> str:
    tmpl = load_template(task)
    return hashlib.sha256(Path(tmpl.filename).read_bytes()).hexdigest()[:16]


def render_block(task: TaskConfig, block: str, doc: dict, doc_id: int) -> str:
    tmpl = load_template(task)
    if block not in tmpl.blocks:
        return ""  # optional for this output type (see required_blocks)
    try:
        ctx = tmpl.new_context({**task.template_vars, **doc, "doc": doc, "doc_id": doc_id})
        return "".join(tmpl.blocks[block](ctx))
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


def prompt_hash(context: str, continuation: str) -> str:
    return hashlib.sha256(f"{context}\x00{continuation}".encode()).hexdigest()[:16]

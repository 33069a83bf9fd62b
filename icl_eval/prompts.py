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

# A template file defines these blocks; `choices` only for multiple-choice tasks.
BLOCKS = ("input", "target")


@dataclass(frozen=True)
class Example:
    """One document rendered by its task's template, before any demonstrations."""

    doc_id: int
    input: str
    target: str


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
    missing = [b for b in BLOCKS if b not in tmpl.blocks]
    if missing:
        raise IclEvalError(f"{tmpl.filename}: missing block(s) {', '.join(missing)}; define {{% block input %}}...{{% endblock %}} and {{% block target %}}...{{% endblock %}}")
    return tmpl


def template_hash(task: TaskConfig) -> str:
    tmpl = load_template(task)
    return hashlib.sha256(Path(tmpl.filename).read_bytes()).hexdigest()[:16]


def render_block(task: TaskConfig, block: str, doc: dict, doc_id: int) -> str:
    tmpl = load_template(task)
    try:
        ctx = tmpl.new_context({**doc, "doc": doc, "doc_id": doc_id})
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


def render(task: TaskConfig, doc: dict, doc_id: int) -> Example:
    inp, tgt = render_example(task, doc, doc_id)
    return Example(doc_id, inp, tgt)


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

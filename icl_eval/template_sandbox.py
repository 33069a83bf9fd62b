"""A Jinja sandbox with a cost meter: task templates come from strangers, so a prompt may not cost unbounded
memory or time (`{{ 9**(9**9) }}`, `{{ 'x' * 10**10 }}`, `{{ lipsum(n=3000000) }}`, loops inside loops).

Every operation that can make a value much larger than its inputs is checked *before* it runs (integer powers
and products, sequence repetition and concatenation, `~`, the growing string methods and filters, format widths);
every value made is charged to a per-render budget; loops, calls and attribute lookups tick a deadline. These are
defence in depth, not a proof: a task from someone you do not trust still belongs under `ulimit -v`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import re
import string
import time
from collections.abc import Iterable, Iterator
from typing import Any

from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import generate_lorem_ipsum

MAX_CHARS = 4_000_000  # one value (string, list) or one rendered block
MAX_TOTAL_CHARS = 64_000_000  # everything one render (or one YAML expression) may make
MAX_INT_BITS = 4096  # integers made by ** and * (about 1,233 digits)
MAX_SECONDS = 5.0  # one render
MAX_LIPSUM = 100  # paragraphs (and words per paragraph is capped by MAX_CHARS)


class LimitError(Exception):
    """A template went over one of the limits above; the message names the limit."""


class _Meter:
    def __init__(self) -> None:
        self.deadline = time.monotonic() + MAX_SECONDS
        self.spent = 0
        self.ticks = 0

    def tick(self) -> None:
        self.ticks += 1
        if self.ticks % 64 == 0 and time.monotonic() > self.deadline:
            raise LimitError(f"rendering took over {MAX_SECONDS:g} s (limit icl_eval.template_sandbox.MAX_SECONDS)")

    def charge(self, size: int, what: str) -> None:
        if size > MAX_CHARS:
            raise LimitError(f"{what} would hold {size:,} items/characters, over the limit of {MAX_CHARS:,} (icl_eval.template_sandbox.MAX_CHARS)")
        self.spent += size
        if self.spent > MAX_TOTAL_CHARS:
            raise LimitError(f"one render made over {MAX_TOTAL_CHARS:,} characters in all (limit icl_eval.template_sandbox.MAX_TOTAL_CHARS)")


_METER: contextvars.ContextVar[_Meter | None] = contextvars.ContextVar("icl_eval_template_meter", default=None)


@contextlib.contextmanager
def metered() -> Iterator[None]:
    """One render or one expression: a fresh budget and deadline."""
    token = _METER.set(_Meter())
    try:
        yield
    finally:
        _METER.reset(token)


def _meter() -> _Meter:
    # Outside metered() (Jinja folds constants at compile time) each operation gets a budget of its own.
    return _METER.get() or _Meter()


def render_bounded(chunks: Iterable[str]) -> str:
    """Join a block's output as it streams, refusing it once it passes MAX_CHARS."""
    meter, out, size = _meter(), [], 0
    for chunk in chunks:
        size += len(chunk)
        meter.tick()
        if size > MAX_CHARS:
            raise LimitError(f"the rendered block is over {MAX_CHARS:,} characters (limit icl_eval.template_sandbox.MAX_CHARS)")
        out.append(chunk)
    return "".join(out)


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (str, bytes, list, tuple, dict, set, frozenset)) else 0


def _check_int(value: Any, what: str) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
        raise LimitError(f"{what} gives an integer of over {MAX_INT_BITS} bits (limit icl_eval.template_sandbox.MAX_INT_BITS)")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _binop_size(op: str, left: Any, right: Any) -> int | None:
    """The size a growing operator would produce, or None when it cannot grow anything."""
    if op == "**" and _is_int(left) and _is_int(right) and right > 0 and abs(left) > 1:
        return None if left.bit_length() * right <= MAX_INT_BITS else -1
    if op == "*":
        if _is_int(left) and _is_int(right):
            return None if left.bit_length() + right.bit_length() <= MAX_INT_BITS + 1 else -1
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, (str, bytes, list, tuple)) and _is_int(n):
                return len(seq) * max(n, 0)
    if op == "+" and isinstance(left, (str, bytes, list, tuple)) and isinstance(right, (str, bytes, list, tuple)):
        return len(left) + len(right)
    return None


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_percent_format(fmt: str, args: Any) -> None:
    """`'%0999999999d' % 1` and `'%*d' % (10**10, 1)` would allocate the width."""
    star = False
    for width, precision in _PERCENT_SPEC.findall(fmt):
        for n in (width, precision):
            star |= n == "*"
            if n.isdigit() and int(n) > MAX_CHARS:
                raise LimitError(f"format width {int(n):,} is over the limit of {MAX_CHARS:,} (icl_eval.template_sandbox.MAX_CHARS)")
    if star:
        _check_int_args(args if isinstance(args, tuple) else (args,), {})


def _check_brace_format(fmt: str, args: tuple, kwargs: dict) -> None:
    """str.format: `'{:>9999999999}'` or a nested width `'{:{}}'` taken from the arguments."""
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # str.format raises the same error itself
    for _, _, spec, _ in fields:
        if not spec:
            continue
        for n in re.findall(r"\d+", spec):
            if int(n) > MAX_CHARS:
                raise LimitError(f"format width {int(n):,} is over the limit of {MAX_CHARS:,} (icl_eval.template_sandbox.MAX_CHARS)")
        if "{" in spec:
            _check_int_args(args, kwargs)


def _check_int_args(args: tuple, kwargs: dict) -> None:
    for a in (*args, *(v for k, v in kwargs.items() if not k.startswith("_"))):
        if _is_int(a) and abs(a) > MAX_CHARS:
            raise LimitError(f"argument {a:,} is over the limit of {MAX_CHARS:,} (icl_eval.template_sandbox.MAX_CHARS)")


def _join_size(sep: Any, items: list) -> int:
    return sum(len(x) if isinstance(x, (str, bytes)) else len(str(x)) for x in items) + len(sep) * max(len(items) - 1, 0)


def _replace_size(s: str, old: Any, new: Any, count: Any = -1) -> int:
    if not all(isinstance(x, (str, bytes)) for x in (old, new)):
        return 0
    hits = len(s) + 1 if not old else len(s) // len(old)
    if _is_int(count) and count >= 0:
        hits = min(hits, count)
    return len(s) + hits * len(new)


def _method_size(obj: Any, args: tuple, kwargs: dict) -> tuple[int, tuple]:
    """(size the result may reach, the arguments to call with) for the string methods that grow their input."""
    s, name = obj.__self__, obj.__name__
    if name in ("ljust", "rjust", "center", "zfill") and args and _is_int(args[0]):
        return max(len(s), args[0]), args
    if name == "expandtabs":
        tab = args[0] if args else kwargs.get("tabsize", 8)
        return len(s) * max(tab, 1) if _is_int(tab) else 0, args
    if name == "replace" and len(args) >= 2:
        return _replace_size(s, *args[:3]), args
    if name == "join" and args:
        items = list(args[0])  # an iterator is read once here and handed on as a list
        return _join_size(s, items), (items, *args[1:])
    if name == "translate" and args and isinstance(args[0], dict):
        longest = max((len(v) for v in args[0].values() if isinstance(v, (str, bytes))), default=1)
        return len(s) * max(longest, 1), args
    return 0, args


# Filters whose output may far outgrow their input: an upper bound on the output, from the arguments.
def _filter_size(name: str, value: Any, args: tuple, kwargs: dict) -> tuple[int, Any]:
    if name == "join":
        items = list(value)
        sep = args[0] if args else kwargs.get("d", "")
        return _join_size(sep if isinstance(sep, str) else "", items), items
    text = value if isinstance(value, str) else None
    if text is None:
        if name == "sum":
            items = list(value)
            return sum(_size(x) for x in items), items
        if name == "tojson":
            indent = args[0] if args else kwargs.get("indent")
            if _is_int(indent) and indent > 64:
                raise LimitError(f"tojson indent {indent} is over the limit of 64")
        return 0, value
    if name == "indent":
        width = args[0] if args else kwargs.get("width", 4)
        per_line = len(width) if isinstance(width, str) else width if _is_int(width) else 0
        return len(text) + (text.count("\n") + 1) * max(per_line, 0), value
    if name == "replace" and len(args) >= 2:
        return _replace_size(text, *args[:3]), value
    if name == "format":
        _check_percent_format(text, args)
        return len(text) + sum(_size(a) if _size(a) else len(str(a)) for a in (*args, *kwargs.values())), value
    if name == "wordwrap":
        width = args[0] if args else kwargs.get("width", 79)
        wrap = kwargs.get("wrapstring") if len(args) < 3 else args[2]
        width = width if _is_int(width) and width > 0 else 1
        return len(text) + (len(text) // width + 1) * len(wrap or "\n"), value
    if name == "center":
        width = args[0] if args else kwargs.get("width", 80)
        return max(len(text), width if _is_int(width) else 0), value
    if name == "urlize":
        extra = sum(len(a) for a in (*args, *kwargs.values()) if isinstance(a, str))
        return len(text) * (1 + extra) + 64 * len(text), value
    return 0, value


def _bounded_filter(name: str, fn):
    @functools.wraps(fn)  # keeps jinja's pass_context/pass_environment marks
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        meter = _meter()
        meter.tick()
        # A pass_context filter gets the context first; the value is the first argument after it.
        lead = 1 if getattr(fn, "jinja_pass_arg", None) is not None else 0
        if len(args) > lead:
            rest = args[lead + 1 :]
            _check_int_args(rest, kwargs)
            size, value = _filter_size(name, args[lead], rest, kwargs)
            if size:
                meter.charge(size, f"the filter '{name}'")
            args = (*args[:lead], value, *rest)
        out = fn(*args, **kwargs)
        if _size(out):
            meter.charge(_size(out), f"the filter '{name}'")
        return out

    return wrapper


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    if not (_is_int(n) and _is_int(max)) or n > MAX_LIPSUM or n * max > MAX_CHARS // 10:
        raise LimitError(f"lipsum(n={n}, max={max}) is over the limit of {MAX_LIPSUM} paragraphs / {MAX_CHARS // 10:,} words (icl_eval.template_sandbox)")
    return generate_lorem_ipsum(n, html, min, max)


def _bounded_loop(iterable: Any) -> Iterator[Any]:
    meter = _meter()
    for item in iterable:
        meter.tick()
        yield item


def _bounded_concat(parts: list) -> str:
    strs = [str(p) for p in parts]
    _meter().charge(sum(len(s) for s in strs), "the '~' concatenation")
    return "".join(strs)


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox (no list.extend doubling either) plus the cost meter."""

    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.filters = {name: _bounded_filter(name, fn) for name, fn in self.filters.items()}
        self.filters["icl_bounded_loop"] = _bounded_loop
        self.filters["icl_bounded_concat"] = _bounded_concat
        self.globals["lipsum"] = _lipsum

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        meter = _meter()
        meter.tick()
        size = _binop_size(operator, left, right)
        if size == -1:
            raise LimitError(f"'{operator}' would give an integer of over {MAX_INT_BITS} bits (limit icl_eval.template_sandbox.MAX_INT_BITS)")
        if size:
            meter.charge(size, f"'{operator}'")
        if operator == "%" and isinstance(left, str):
            _check_percent_format(left, right)
        out = super().call_binop(context, operator, left, right)
        _check_int(out, f"'{operator}'")
        if operator == "%" and isinstance(out, str):
            meter.charge(len(out), "'%' formatting")
        return out

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (jinja's signature)
        meter = _meter()
        meter.tick()
        if isinstance(getattr(__obj, "__self__", None), (str, bytes)):
            size, args = _method_size(__obj, args, kwargs)
            if size:
                meter.charge(size, f"'.{__obj.__name__}()'")
        out = super().call(__context, __obj, *args, **kwargs)
        if _size(out):
            meter.charge(_size(out), "a call's result")
        return out

    def getattr(self, obj: Any, attribute: str) -> Any:
        _meter().tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _meter().tick()
        return super().getitem(obj, argument)

    def wrap_str_format(self, value: Any) -> Any:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt = value.__self__

        def checked(*args: Any, **kwargs: Any) -> str:
            _check_brace_format(fmt, args, kwargs)
            out = wrapped(*args, **kwargs)
            _meter().charge(len(out), "'.format()'")
            return out

        return checked

    def _generate(self, source: nodes.Template, name: str | None, filename: str | None, defer_init: bool = False) -> str:
        return super()._generate(_rewrite(source), name, filename, defer_init=defer_init)


def _rewrite(node: nodes.Node) -> nodes.Node:
    """Every loop ticks the deadline per item and every `~` is charged: neither passes through call or binop."""
    for name, value in node.iter_fields():
        if isinstance(value, nodes.Node):
            setattr(node, name, _rewrite(value))
        elif isinstance(value, list):
            value[:] = [_rewrite(v) if isinstance(v, nodes.Node) else v for v in value]
    if isinstance(node, nodes.For):
        node.iter = nodes.Filter(node.iter, "icl_bounded_loop", [], [], None, None, lineno=node.lineno)
    if isinstance(node, nodes.Concat):
        return nodes.Filter(nodes.List(node.nodes, lineno=node.lineno), "icl_bounded_concat", [], [], None, None, lineno=node.lineno)
    return node

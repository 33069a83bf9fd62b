"""Property-based tests: the YAML loader, the template renderer and the context/continuation splitter.

Whatever a task file, a template or a document holds, the harness either works or says IclEvalError:
never another exception, never a silently altered string.
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conftest import make_hf_model
from icl_eval.cache import request_key
from icl_eval.errors import IclEvalError
from icl_eval.metrics import METRICS
from icl_eval.prompts import render_block
from icl_eval.requests import LoglikelihoodRequest
from icl_eval.task_config import load_task_file

SETTINGS = settings(max_examples=60, deadline=None, database=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
_counter = itertools.count()


@pytest.fixture(scope="module")
def workdir() -> Path:
    # Not tmp_path: hypothesis runs many examples per test, each wants a fresh file name.
    return Path(tempfile.mkdtemp(prefix="icl-props-"))


def _write(workdir: Path, suffix: str, text: str) -> Path:
    path = workdir / f"f{next(_counter)}{suffix}"
    path.write_text(text, encoding="utf-8")
    return path


# --- the YAML loader -----------------------------------------------------------------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12))
yaml_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=8)
KEYS = ["name", "output_type", "template", "data", "metrics", "until", "max_new_tokens", "fewshot", "description", "description_max_shots", "target_delimiter", "metric", "dat"]


@SETTINGS
@given(st.text(max_size=200))
def test_any_text_loads_or_fails_with_iclevalerror(workdir, text):
    try:
        load_task_file(_write(workdir, ".yaml", text))
    except IclEvalError as e:
        assert str(e).startswith(str(workdir)) and "\n" not in str(e).strip()


@SETTINGS
@given(st.dictionaries(st.sampled_from(KEYS), yaml_values, max_size=8), st.dictionaries(st.sampled_from(["local", "hub", "format", "generator_args", "x"]), yaml_values, max_size=3))
def test_any_mapping_loads_or_fails_with_iclevalerror(workdir, raw, data):
    raw = {**raw, "data": data} if data else raw
    path = _write(workdir, ".yaml", yaml.safe_dump(raw, allow_unicode=True))
    try:
        load_task_file(path)
    except IclEvalError as e:
        assert str(path) in str(e)


names = st.text(st.characters(categories=["L", "N"]), min_size=1, max_size=10)
# PyYAML itself cannot round-trip NEL (U+0085) and friends, so generated strings avoid them.
YAML_SAFE_CHARS = st.characters(categories=["L", "N", "P", "Zs"], include_characters="\n\t")


@st.composite
def types_and_metrics(draw) -> tuple[str, list[str]]:
    """An output type and metrics that apply to it: the schema rejects any other pairing."""
    output_type = draw(st.sampled_from(("loglikelihood", "generate", "multiple_choice")))
    fitting = sorted(m for m, spec in METRICS.items() if output_type in spec.output_types)
    return output_type, draw(st.lists(st.sampled_from(fitting), min_size=1, max_size=3, unique=True))


@SETTINGS
@given(
    name=names,
    typed=types_and_metrics(),
    until=st.lists(st.text(YAML_SAFE_CHARS, min_size=1, max_size=3), max_size=3),
    delimiter=st.text(YAML_SAFE_CHARS, max_size=3),
    max_new_tokens=st.integers(0, 512),
)
def test_valid_configs_round_trip(workdir, name, typed, until, delimiter, max_new_tokens):
    output_type, metrics = typed
    raw = {
        "name": name, "output_type": output_type, "template": "t.jinja", "metrics": metrics, "until": until,
        "fewshot_delimiter": delimiter, "max_new_tokens": max_new_tokens, "data": {"local": "x.jsonl"},
    }
    if output_type == "multiple_choice":
        raw.update(choices="endings", gold="label")
    text = yaml.safe_dump(raw, allow_unicode=True)
    a, b = load_task_file(_write(workdir, ".yaml", text)), load_task_file(_write(workdir, ".yaml", text))
    assert (a.name, a.output_type, a.metrics, a.until, a.fewshot_delimiter, a.max_new_tokens) == (name, output_type, tuple(metrics), tuple(until), delimiter, max_new_tokens)
    assert a.config_hash() == b.config_hash(), "the hash ignores where the file is"


# --- the template renderer -----------------------------------------------------------------------------------


def _task(workdir: Path, input_block: str):
    template = _write(workdir, ".jinja", "{% block input %}" + input_block + "{% endblock %}{% block target %}{{ a }}{% endblock %}")
    task_text = f"name: t\noutput_type: loglikelihood\ntemplate: {template.name}\nmetrics: [acc]\ndata:\n  local: x.jsonl\n"
    return load_task_file(_write(workdir, ".yaml", task_text))


@SETTINGS
@given(st.text(), st.text())
def test_fields_render_verbatim(workdir, q, a):
    """No escaping, no trimming, no newline handling: the document's text reaches the prompt unchanged."""
    task = _task(workdir, "<{{ q }}|{{ doc['q'] }}>")
    assert render_block(task, "input", {"q": q, "a": a}, 7) == f"<{q}|{q}>"
    assert render_block(task, "target", {"q": q, "a": a}, 7) == a


@SETTINGS
@given(st.lists(st.sampled_from(list("{}%#()[]|.'\"_ abqx0-+*~") + ["{{", "}}", "{%", "%}", "__class__", "self", "doc", "q", "if ", "for ", " in ", "endfor", "endif", "set ", "lipsum", "range(9)"]), max_size=14).map("".join))
def test_any_template_renders_or_fails_with_iclevalerror(workdir, source):
    try:
        task = _task(workdir, source)
        out = render_block(task, "input", {"q": "hi", "a": "x"}, 0)
    except IclEvalError:
        return
    assert isinstance(out, str) and "<class" not in out and "<function" not in out


# --- the context/continuation splitter -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tiny_gpt2_model, gpt2_tokenizer):
    return make_hf_model(tiny_gpt2_model, gpt2_tokenizer)


texts = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=30)


@settings(SETTINGS, max_examples=200)
@given(context=texts, continuation=texts)
def test_split_is_the_whole_tokenization_cut_at_the_boundary(model, gpt2_tokenizer, context, continuation):
    stripped = context.rstrip()
    moved = context[len(stripped):] + continuation
    if not moved:
        with pytest.raises(IclEvalError):
            model.encode_pair(context, continuation)
        return
    enc = model.encode_pair(context, continuation)
    assert enc.continuation, "a continuation always gets a token"
    if not stripped:
        assert enc.context == [model.prefix_id]
        assert enc.continuation == gpt2_tokenizer(moved, add_special_tokens=False).input_ids
        return
    whole = gpt2_tokenizer(stripped + moved, add_special_tokens=False, return_offsets_mapping=True)
    assert enc.context + enc.continuation == whole.input_ids, "no token is lost, added or re-tokenized"
    n = len(enc.context)
    assert all(end <= len(stripped) for _, end in whole.offset_mapping[:n]), "context tokens hold context characters only"
    assert gpt2_tokenizer.decode(whole.input_ids) == stripped + moved, "byte-level BPE round trip"


@SETTINGS
@given(*[st.one_of(st.text(max_size=8), st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=()), max_size=2))] * 4)  # lone surrogates too: bad data can hold them
def test_cache_keys_tell_requests_apart(a, b, c, d):
    assume((a, b) != (c, d))
    ns = "{}"
    assert request_key("loglikelihood", LoglikelihoodRequest(a, b), ns) != request_key("loglikelihood", LoglikelihoodRequest(c, d), ns)
    assert request_key("loglikelihood", LoglikelihoodRequest(a, b), ns) != request_key("loglikelihood", LoglikelihoodRequest(a, b), ns + " ")

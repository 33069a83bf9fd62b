"""Task, template, checkpoint and cache files come from strangers: reading them must never run code."""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
import shutil
from pathlib import Path

import pytest

from icl_eval.cli import main
from icl_eval.errors import IclEvalError
from icl_eval.prompts import render_block
from icl_eval.task_config import load_task_file

REPO = Path(__file__).resolve().parent.parent
TASK = "name: t\noutput_type: loglikelihood\ntemplate: t.jinja\nmetrics: [acc]\ndata:\n  local: t.jsonl\n"


def _task(tmp_path: Path, template_input: str):
    (tmp_path / "t.yaml").write_text(TASK)
    (tmp_path / "t.jinja").write_text("{% block input %}" + template_input + "{% endblock %}{% block target %}{{ a }}{% endblock %}")
    return load_task_file(tmp_path / "t.yaml")


def _shell(marker: Path) -> str:
    return f"touch {marker}"


# Classic server-side template injection payloads: each reaches for Python internals one way or another.
ATTACKS = [
    "{{ ''.__class__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ().__class__.__base__.__subclasses__() }}",
    "{% for c in ''.__class__.__mro__ %}{{ c }}{% endfor %}",
    "{{ cycler.__init__.__globals__.os.popen('SHELL').read() }}",
    "{{ lipsum.__globals__['os'].popen('SHELL').read() }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ range.__globals__ }}",
    "{{ self.__dict__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ doc.__class__.__init__.__globals__ }}",
    "{{ q.__len__() }}",
    "{{ [].pop.__self__ }}",
    "{{ q|attr('__class__') }}",
    "{{ '{0.__class__}'.format(doc) }}",
    "{{ '%s'|format(q.__class__) }}",
]


@pytest.mark.parametrize("attack", ATTACKS)
def test_template_reaching_for_internals_fails_clearly(attack, tmp_path):
    marker = tmp_path / "PWNED"
    task = _task(tmp_path, attack.replace("SHELL", _shell(marker)))
    with pytest.raises(IclEvalError) as e:
        render_block(task, "input", {"q": "hi", "a": "x"}, 0)
    msg = str(e.value)
    assert "t.jinja" in msg and "block 'input'" in msg
    assert "unsafe template operation refused" in msg and "is unsafe" in msg and "use the document's fields" in msg
    assert not marker.exists()


@pytest.mark.parametrize(
    "attack,needle",
    [
        ("{% include '../../../../etc/passwd' %}", "included template '../../../../etc/passwd' not found"),
        ("{{ range(10**9)|list|length }}", "Range too big"),
    ],
)
def test_templates_cannot_read_files_or_exhaust_memory(attack, needle, tmp_path):
    with pytest.raises(IclEvalError, match=re.escape(needle)):
        render_block(_task(tmp_path, attack), "input", {"q": "hi", "a": "x"}, 0)


def test_unsafe_template_through_the_cli_is_one_line(tmp_path, capsys):
    _task(tmp_path, "{{ lipsum.__globals__['os'].popen('" + _shell(tmp_path / "PWNED") + "').read() }}")
    (tmp_path / "t.jsonl").write_text(json.dumps({"q": "hi", "a": "x"}) + "\n")
    assert main(["validate", str(tmp_path / "t.yaml"), "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("icl-eval: error: ") and "\n" not in err and "unsafe" in err
    assert not (tmp_path / "PWNED").exists()


def test_plain_templates_still_work(tmp_path):
    task = _task(tmp_path, "{{ q|upper }} {{ doc['a'] }} {{ q.split('i')|join('-') }} {{ doc_id }}")
    assert render_block(task, "input", {"q": "hi", "a": "x"}, 3) == "HI x h- 3"


@pytest.mark.parametrize(
    "tag",
    [
        '!!python/object/apply:os.system ["SHELL"]',
        "!!python/name:os.system",
        '!!python/object/new:subprocess.Popen [["sh", "-c", "SHELL"]]',
        '!!python/object/apply:subprocess.check_output [["sh", "-c", "SHELL"]]',
    ],
)
def test_yaml_tags_never_build_objects(tag, tmp_path):
    marker = tmp_path / "PWNED"
    (tmp_path / "t.yaml").write_text(TASK.replace("output_type: loglikelihood", "output_type: " + tag.replace("SHELL", _shell(marker))))
    with pytest.raises(IclEvalError, match=r"t\.yaml:2: YAML tag not allowed .*remove the tag"):
        load_task_file(tmp_path / "t.yaml")
    assert not marker.exists()


# --- checkpoints -----------------------------------------------------------------------------------------------


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _evil_pickle(path: Path, marker: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump({"transformer.wte.weight": _Evil(marker)}, f)


def test_pickled_weights_that_would_run_code_are_refused(tiny_checkpoint, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt, ignore=shutil.ignore_patterns("*.safetensors"))
    _evil_pickle(ckpt / "pytorch_model.bin", marker)
    assert main(["run", "--model", str(ckpt), "--tasks", "arithmetic_2da", "--limit", "1", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot load weights" in err and "could run code" in err and "safetensors" in err and "Traceback" not in err
    assert not marker.exists()


def test_safetensors_are_preferred_over_a_pickle_beside_them(tiny_checkpoint, tmp_path):
    from icl_eval.models.hf import HFModel

    marker = tmp_path / "PWNED"
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    _evil_pickle(ckpt / "pytorch_model.bin", marker)
    model = HFModel.load(str(ckpt), device="cpu")
    assert model.num_parameters > 0 and not marker.exists()


def test_checkpoint_code_runs_only_with_trust_remote_code(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from icl_eval.models.hf import HFModel

    marker = tmp_path / "REMOTE_CODE_RAN"
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    (ckpt / "evil_model.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import GPT2Config, GPT2LMHeadModel\n"
        "class EvilConfig(GPT2Config):\n    model_type = 'gpt2'\n"
        "class EvilModel(GPT2LMHeadModel):\n    config_class = EvilConfig\n"
    )
    config = json.loads((ckpt / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil_model.EvilConfig", "AutoModelForCausalLM": "evil_model.EvilModel"}
    (ckpt / "config.json").write_text(json.dumps(config))
    HFModel.load(str(ckpt), device="cpu")
    assert not marker.exists(), "the checkpoint's own code ran without --trust-remote-code"

    # The flag reaches every loader (not run for real here: it would write into the shared modules cache).
    seen = []
    for cls in (AutoConfig, AutoTokenizer, AutoModelForCausalLM):
        real = cls.from_pretrained.__func__

        def spy(c, *a, _real=real, _name=cls.__name__, **k):
            seen.append((_name, k.get("trust_remote_code")))
            return _real(c, *a, **k)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    for flag in ([], ["--trust-remote-code"]):
        seen.clear()
        assert main(["run", "--model", str(tiny_checkpoint), "--tasks", "arithmetic_2da", "--limit", "1", "--no-cache", "--output", str(tmp_path / "o"), *flag]) == 0
        assert {name for name, _ in seen} == {"AutoConfig", "AutoTokenizer", "AutoModelForCausalLM"}
        assert all(value is bool(flag) for _, value in seen), seen
    capsys.readouterr()


# --- the package itself ----------------------------------------------------------------------------------------

FORBIDDEN = re.compile(r"(?<![\w.])(eval|exec|compile)\(|\bpickle\b|\bmarshal\b|\bshelve\b|\bdill\b|torch\.load\(|yaml\.(load|unsafe_load|full_load)\(|yaml\.(Unsafe|Full)?Loader\b|__import__\(")


def test_no_code_execution_primitives_in_the_package():
    """No eval/exec/pickle anywhere: task, cache and results files are read as data only."""
    hits = []
    for path in sorted((REPO / "icl_eval").rglob("*.py")):
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if FORBIDDEN.search(code):
                hits.append(f"{path.relative_to(REPO)}:{lineno}: {line.strip()}")
    assert not hits, "\n".join(hits)


def test_the_guard_catches_what_it_should():
    for bad in ("x = eval(s)", "exec(code)", "import pickle", "yaml.load(text)", "torch.load(f)", "yaml.Loader", "__import__('os')"):
        assert FORBIDDEN.search(bad), bad
    for fine in ("model.eval()", "ast.literal_eval(s)", "yaml.safe_load(text)", "self.model = model.eval()", "re.compile(p)"):
        assert not FORBIDDEN.search(fine), fine


def test_safe_loader_everywhere():
    # Every module that reads YAML builds objects only through the safe constructor, and none names an unsafe one.
    uses = [p for p in (REPO / "icl_eval").rglob("*.py") if "yaml." in p.read_text()]
    assert uses and all(("yaml.safe_load" in t or "SafeConstructor()" in t) for t in (p.read_text() for p in uses))
    assert not any(re.search(r"yaml\.(unsafe_load|full_load|load\(|(Unsafe|Full)?Loader\b|CLoader|Constructor\()", p.read_text()) for p in uses)


# --- hardening: leaks through links, names that leave --output, and expansion bombs ------------------------------


def test_an_include_through_a_symlink_cannot_read_outside_the_task(tmp_path):
    task_dir = tmp_path / "task"
    task_dir.mkdir()
    (tmp_path / "secret.txt").write_text("SECRET")
    (task_dir / "leak").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(IclEvalError, match=r"resolves to .*secret\.txt, outside the task's template folders") as e:
        render_block(_task(task_dir, "{% include 'leak' %}"), "input", {"q": "hi", "a": "x"}, 0)
    assert "SECRET" not in str(e.value)


def test_an_include_through_a_symlink_inside_the_task_still_works(tmp_path):
    (tmp_path / "real.txt").write_text("shared part")
    (tmp_path / "part").symlink_to(tmp_path / "real.txt")
    assert render_block(_task(tmp_path, "{% include 'part' %}"), "input", {"q": "hi", "a": "x"}, 0) == "shared part"


@pytest.mark.parametrize("name", ["../../escaped", "ABSOLUTE/escaped", "a/b", "a\\b", ".hidden", "..", "-rf", "x" * 101, "tab\tname", "nul\x00", ""])
def test_task_names_that_would_leave_the_run_folder_are_refused(name, tmp_path, tiny_checkpoint, capsys):
    name = name.replace("ABSOLUTE", str(tmp_path))
    (tmp_path / "t.yaml").write_text(TASK.replace("name: t", f"name: {json.dumps(name)}"))
    (tmp_path / "t.jinja").write_text("{% block input %}{{ q }}{% endblock %}{% block target %}{{ a }}{% endblock %}")
    (tmp_path / "t.jsonl").write_text(json.dumps({"q": "hi", "a": "x"}) + "\n")
    out = tmp_path / "deep" / "er" / "out"
    argv = ["run", "--model", str(tiny_checkpoint), "--tasks", str(tmp_path / "t.yaml"), "--data-dir", str(tmp_path), "--output", str(out), "--no-cache"]
    assert main(argv) == 2
    assert "is not a valid task name" in capsys.readouterr().err
    written = [p for p in tmp_path.rglob("*") if p.suffix == ".jsonl" and p.name != "t.jsonl"]
    assert not written


def test_valid_task_names_load(tmp_path):
    for name in ("t", "arithmetic_2da", "my-task.v2", "_x", "A" * 100, "übersetzung_de", "問答"):
        (tmp_path / "t.yaml").write_text(TASK.replace("name: t", f"name: {name}"))
        assert load_task_file(tmp_path / "t.yaml").name == name


# Each bomb runs in a child with 1 GiB of address space and a time limit: before the limits existed these hung
# or were killed; now each ends in one IclEvalError naming the file and the limit, in well under a second.
_LAUGHS = "template_vars:\n  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"  {c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi")
)
_LONG_SCALAR = "template_vars:\n  a: &a " + "x" * 100_000 + "\n  b: &b [" + ", ".join(["*a"] * 100) + "]\n  c: [" + ", ".join(["*b"] * 100) + "]\n"
YAML_BOMBS = {"billion-laughs": (_LAUGHS, "MAX_YAML_NODES"), "long-scalar-aliases": (_LONG_SCALAR, "MAX_YAML_CHARS"), "recursive-alias": ("template_vars: &r {x: [*r]}\n", "recursive YAML alias")}
TEMPLATE_BOMBS = {
    "int-power": ("{{ 9**(9**9) }}", "MAX_INT_BITS"),
    "int-product": ("{% set n = 10**1000 %}{{ n * n * n * n * n }}", "MAX_INT_BITS"),
    "lipsum": ("{{ lipsum(n=3000000) }}", "limit of 100 paragraphs"),
    "string-repeat": ("{{ 'x' * 10**10 }}", "MAX_CHARS"),
    "list-repeat": ("{{ ([0] * 10**10)|length }}", "MAX_CHARS"),
    "range": ("{{ range(10**9)|list|length }}", "Range too big"),
    "ljust": ("{{ 'x'.ljust(10**10) }}", "MAX_CHARS"),
    "center-filter": ("{{ 'x'|center(10000000000) }}", "MAX_CHARS"),
    "format-width": ("{{ '{:>9999999999}'.format(1) }}", "MAX_CHARS"),
    "percent-width": ("{{ '%0999999999d' % 1 }}", "MAX_CHARS"),
    "concat-doubling": ("{% set ns = namespace(s='x' * 1000000) %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}", "MAX_CHARS"),
    "join": ("{{ range(100000)|join('x' * 100000) }}", "MAX_CHARS"),
    "replace": ("{{ ('ab' * 1000000)|replace('', 'x' * 1000) }}", "MAX_CHARS"),
    "output": ("{% set s = 'x' * 1000000 %}{% for i in range(10000) %}{{ s }}{% endfor %}", "rendered block is over"),
    "total": ("{% for i in range(100000) %}{% set s = 'x' * 3000000 %}{% endfor %}", "MAX_TOTAL_CHARS"),
    "nested-loops": ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "MAX_SECONDS"),
}
_CHILD = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from pathlib import Path
from icl_eval import template_sandbox
from icl_eval.errors import IclEvalError
from icl_eval.prompts import render_block
from icl_eval.task_config import load_task_file
template_sandbox.MAX_SECONDS = 0.5
try:
    task = load_task_file(Path(sys.argv[1]))
    task.config_hash()
    render_block(task, "input", {"q": "hi", "a": "x"}, 0)
except IclEvalError as e:
    print("REFUSED", e)
else:
    print("RENDERED")
"""


def _bomb(tmp_path: Path, task: str, template_input: str) -> str:
    import subprocess
    import sys

    (tmp_path / "t.yaml").write_text(task)
    (tmp_path / "t.jinja").write_text("{% block input %}" + template_input + "{% endblock %}{% block target %}{{ a }}{% endblock %}")
    try:
        done = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "t.yaml")], capture_output=True, text=True, timeout=20, cwd=REPO,
                              env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    except subprocess.TimeoutExpired:
        pytest.fail("the bomb ran past 20 s")
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.parametrize("bomb", YAML_BOMBS, ids=list(YAML_BOMBS))
def test_yaml_expansion_bombs_are_refused_in_bounded_time_and_memory(bomb, tmp_path):
    yaml_text, needle = YAML_BOMBS[bomb]
    out = _bomb(tmp_path, TASK + yaml_text, "{{ q }}")
    assert out.startswith("REFUSED") and "t.yaml" in out and needle in out, out


@pytest.mark.parametrize("bomb", TEMPLATE_BOMBS, ids=list(TEMPLATE_BOMBS))
def test_template_expansion_bombs_are_refused_in_bounded_time_and_memory(bomb, tmp_path):
    template_input, needle = TEMPLATE_BOMBS[bomb]
    out = _bomb(tmp_path, TASK, template_input)
    assert out.startswith("REFUSED") and "t.jinja" in out and "block 'input'" in out and needle in out, out


@pytest.mark.parametrize(
    "template_input,expected",
    [
        ("{{ 2**100 }}", str(2**100)),
        ("{{ 'ab' * 3 }}~{{ [1] * 2 }}", "ababab~[1, 1]"),
        ("{{ '%05d|%s' % (42, 'x') }}", "00042|x"),
        ("{{ '{:>6}'.format('ab') }}", "    ab"),
        ("{% for w in 'a b c'.split() %}{{ w ~ loop.index }}{% endfor %}", "a1b2c3"),
        ("{{ ['x', 'y']|join(', ') }} {{ 'aXa'|replace('X', 'b') }} {{ 'ab'|center(6) }}", "x, y aba   ab  "),
        ("{{ q ~ '?' if not q.endswith('?') else q }}", "hi?"),
    ],
)
def test_the_limits_leave_ordinary_templates_alone(template_input, expected, tmp_path):
    assert render_block(_task(tmp_path, template_input), "input", {"q": "hi", "a": "x"}, 0) == expected


def test_data_paths_stay_under_the_data_root_unless_absolute(tmp_path):
    from icl_eval.data import load_docs

    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "d.jsonl").write_text(json.dumps({"q": "SECRET", "a": "x"}) + "\n")
    (root / "link.jsonl").symlink_to(outside / "d.jsonl")
    for local in ("../outside/d.jsonl", "link.jsonl"):
        (tmp_path / "t.yaml").write_text(TASK.replace("local: t.jsonl", f"local: {local}"))
        with pytest.raises(IclEvalError, match="outside the data root"):
            load_docs(load_task_file(tmp_path / "t.yaml"), str(root))
    (tmp_path / "t.yaml").write_text(TASK.replace("local: t.jsonl", f"local: {outside / 'd.jsonl'}"))  # on purpose
    assert load_docs(load_task_file(tmp_path / "t.yaml"), str(root))[0]["q"] == "SECRET"

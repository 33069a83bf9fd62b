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
    uses = [p for p in (REPO / "icl_eval").rglob("*.py") if "yaml." in p.read_text()]
    assert uses and all("yaml.safe_load" in p.read_text() for p in uses)

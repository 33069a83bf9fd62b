"""The catalogue of bad input: each case is one clear line naming the file or field and the fix, exit code 2.

Then the failures that must not stop a run (NaN logits, out of memory, an over-long prompt) and one that must
stop it without losing work (disk full while writing results).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from icl_eval.cli import main

TASK = """name: t
output_type: loglikelihood
template: t.jinja
metrics: [acc]
data:
  local: t.jsonl
"""
TEMPLATE = "{% block input %}Q: {{ q }}{% endblock %}{% block target %}{{ a }}{% endblock %}"
DOCS = [{"q": f"what is {i} plus 1?", "a": str(i + 1)} for i in range(5)]


def write_task(d: Path, task: str = TASK, template: str = TEMPLATE, data: str | None = None) -> Path:
    (d / "t.yaml").write_text(task)
    (d / "t.jinja").write_text(template)
    (d / "t.jsonl").write_text(data if data is not None else "".join(json.dumps(x) + "\n" for x in DOCS))
    return d / "t.yaml"


def run_task(d: Path, ckpt: Path, *extra: str, task: str = TASK, template: str = TEMPLATE, data: str | None = None) -> list[str]:
    return ["run", "--model", str(ckpt), "--tasks", str(write_task(d, task, template, data)), "--data-dir", str(d), "--output", str(d / "out"), *extra]


def run_builtin(d: Path, ckpt: Path | str, *extra: str) -> list[str]:
    return ["run", "--model", str(ckpt), "--tasks", "arithmetic_2da", "--limit", "2", "--output", str(d / "out"), *extra]


def checkpoint_copy(d: Path, ckpt: Path, drop: Callable[[str], bool] = lambda name: False, config: dict | None = None) -> Path:
    dst = d / "ckpt"
    dst.mkdir()
    for f in ckpt.iterdir():
        if not drop(f.name):
            shutil.copy(f, dst / f.name)
    if config is not None:
        (dst / "config.json").write_text(json.dumps(config))
    return dst


def _corrupt_gzip(d: Path, ckpt: Path) -> list[str]:
    (d / "t.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00 this is not gzip data at all")
    return run_task(d, ckpt, task=TASK.replace("local: t.jsonl", "local: t.jsonl.gz"))


def _xml_data(d: Path, ckpt: Path) -> list[str]:
    (d / "t.xml").write_text("<q>x</q>\n")
    return run_task(d, ckpt, task=TASK.replace("t.jsonl", "t.xml"))


def _corrupt_cache(d: Path, ckpt: Path) -> list[str]:
    (d / "bad.sqlite").write_bytes(b"SQLite format 3\x00" + b"\xff" * 200)
    return run_builtin(d, ckpt, "--cache", str(d / "bad.sqlite"))


def _not_a_folder(d: Path, ckpt: Path) -> list[str]:
    (d / "afile").write_text("x")
    return run_builtin(d, ckpt, "--include-path", str(d / "afile"))


def _output_under_a_file(d: Path, ckpt: Path) -> list[str]:
    (d / "afile").write_text("x")
    return ["run", "--model", str(ckpt), "--tasks", "arithmetic_2da", "--output", str(d / "afile" / "results")]


def _yaml_python_tag(d: Path, ckpt: Path) -> list[str]:
    evil = TASK.replace("output_type: loglikelihood", f'output_type: !!python/object/apply:os.system ["touch {d}/pwned"]')
    return run_task(d, ckpt, task=evil)


CASES: list[tuple[str, Callable[[Path, Path], list[str]], tuple[str, ...]]] = [
    # --- task files: YAML and schema ---
    ("yaml-syntax", lambda d, c: run_task(d, c, task=TASK.replace("metrics: [acc]", "metrics: [acc\nfoo: 1")), ("t.yaml:5", "YAML syntax error", "fix the YAML at that line")),
    ("yaml-python-tag", _yaml_python_tag, ("t.yaml:2", "YAML tag not allowed", "remove the tag")),
    ("yaml-not-a-mapping", lambda d, c: run_task(d, c, task="- name: t\n- output_type: generate\n"), ("t.yaml", "must be a YAML mapping")),
    ("misspelled-key", lambda d, c: run_task(d, c, task=TASK.replace("metrics:", "metric:")), ("t.yaml", "unknown key 'metric'", "did you mean 'metrics'")),
    ("misspelled-data-key", lambda d, c: run_task(d, c, task=TASK.replace("local:", "locale:")), ("t.yaml (data)", "unknown key 'locale'", "did you mean 'local'")),
    ("missing-key", lambda d, c: run_task(d, c, task=TASK.replace("template: t.jinja\n", "")), ("t.yaml", "missing required key 'template'")),
    ("wrong-type-int", lambda d, c: run_task(d, c, task=TASK + "max_new_tokens: ten\n"), ("t.yaml", "'max_new_tokens' must be int", "'ten'")),
    ("wrong-type-list", lambda d, c: run_task(d, c, task=TASK.replace("metrics: [acc]", "metrics: 5")), ("t.yaml", "'metrics' must be list")),
    ("negative-count", lambda d, c: run_task(d, c, task=TASK + "description_max_shots: -1\n"), ("t.yaml", "'description_max_shots' must be >= 0")),
    ("bad-output-type", lambda d, c: run_task(d, c, task=TASK.replace("output_type: loglikelihood", "output_type: loglikelyhood")), ("t.yaml", "'output_type'", "did you mean 'loglikelihood'")),
    ("unknown-metric", lambda d, c: run_task(d, c, task=TASK.replace("[acc]", "[acc, perplexty]")), ("t.yaml", "unknown metric 'perplexty'", "did you mean 'perplexity'")),
    ("no-data-source", lambda d, c: run_task(d, c, task=TASK.replace("  local: t.jsonl", "  format: jsonl")), ("t.yaml (data)", "give at least one of 'local', 'hub' or 'generator'")),
    ("unknown-task", lambda d, c: ["run", "--model", str(c), "--tasks", "arithmetc_2da"], ("unknown task 'arithmetc_2da'", "did you mean arithmetic_2da", "icl-eval tasks")),
    ("task-file-missing", lambda d, c: ["run", "--model", str(c), "--tasks", str(d / "nope.yaml")], ("nope.yaml", "does not exist")),
    ("empty-tasks", lambda d, c: ["run", "--model", str(c), "--tasks", " , "], ("--tasks is empty", "e.g. --tasks")),
    ("include-path-not-folder", _not_a_folder, ("--include-path", "not a folder", "give a folder")),
    # --- templates ---
    ("template-syntax", lambda d, c: run_task(d, c, template=TEMPLATE.replace("{{ q }}", "{{ q }")), ("t.jinja:1", "template syntax error")),
    ("template-not-found", lambda d, c: run_task(d, c, task=TASK.replace("t.jinja", "nope.jinja")), ("t.yaml", "template 'nope.jinja'", "(field 'template') not found in")),
    ("template-missing-block", lambda d, c: run_task(d, c, template="{% block input %}{{ q }}{% endblock %}"), ("t.jinja", "missing block(s) target", "define {% block input %}")),
    ("undefined-variable", lambda d, c: run_task(d, c, template=TEMPLATE.replace("{{ q }}", "{{ question }}")), ("t.jinja", "block 'input'", "doc 0", "'question' is undefined", "fields are: a, q")),
    ("template-python-error", lambda d, c: run_task(d, c, template=TEMPLATE.replace("{{ q }}", "{{ q.split()[0] / 2 }}")), ("t.jinja", "doc 0", "TypeError")),
    ("template-unsafe", lambda d, c: run_task(d, c, template=TEMPLATE.replace("{{ q }}", "{{ ''.__class__.__mro__ }}")), ("t.jinja", "unsafe template operation refused", "task files may not reach Python internals")),
    # --- data ---
    ("shots-over-pool", lambda d, c: run_task(d, c, "--shots", "0,10"), ("task 't'", "--shots 10 is larger than the few-shot pool (4 examples)", "use at most 4 shots")),
    ("empty-dataset", lambda d, c: run_task(d, c, data="\n\n"), ("t.jsonl", "holds no examples")),
    ("missing-data-offline", lambda d, c: run_task(d, c, task=TASK.replace("local: t.jsonl", "local: gone/t.jsonl\n  hub: someone/t_data")), ("hub dataset 'someone/t_data'", "gone/t.jsonl", "--data-dir")),
    ("corrupt-data-line", lambda d, c: run_task(d, c, data=json.dumps(DOCS[0]) + "\n" + json.dumps(DOCS[1]) + '\n{"q": "x",\n'), ("t.jsonl:3", "not valid JSON", "fix or remove that line")),
    ("data-line-not-object", lambda d, c: run_task(d, c, data=json.dumps(DOCS[0]) + "\n[1, 2]\n"), ("t.jsonl:2", "expected a JSON object per line")),
    ("unreadable-data-file", _corrupt_gzip, ("t.jsonl.gz", "cannot read data file", "re-download it")),
    ("unknown-data-format", _xml_data, ("t.xml", "no reader for format 'xml'", "set data.format")),
    # --- the model ---
    ("model-missing", lambda d, c: run_builtin(d, d / "no" / "such" / "ckpt"), ("--model", "no such folder", "give a Hugging Face checkpoint folder")),
    ("model-no-config", lambda d, c: run_builtin(d, checkpoint_copy(d, c, drop=lambda n: n == "config.json")), ("--model", "cannot read config.json", "give a checkpoint folder")),
    ("model-not-causal", lambda d, c: run_builtin(d, checkpoint_copy(d, c, config={"model_type": "t5", "vocab_size": 64})), ("--model", "not a causal language model")),
    ("tokenizer-missing", lambda d, c: run_builtin(d, checkpoint_copy(d, c, drop=lambda n: n.startswith(("tokenizer", "vocab", "merges", "special")))), ("--model", "cannot load its tokenizer", "tokenizer.json")),
    ("continuation-over-context", lambda d, c: run_task(d, c, data=json.dumps({"q": "x", "a": "word " * 600}) + "\n"), ("task 't'", "t.yaml", "0-shot", "longer than the model's context (512)")),
    ("no-room-to-generate", lambda d, c: run_task(d, c, task=TASK.replace("loglikelihood", "generate").replace("[acc]", "[exact_match]") + "max_new_tokens: 600\n"), ("task 't'", "max_new_tokens 600", "leaves no room", "context (512)")),
    # --- options ---
    ("limit-zero", lambda d, c: run_builtin(d, c, "--limit", "0"), ("--limit 0", "positive number")),
    ("limit-negative", lambda d, c: run_builtin(d, c, "--limit", "-3"), ("--limit -3", "positive number")),
    ("limit-not-a-number", lambda d, c: run_builtin(d, c, "--limit", "ten"), ("--limit", "invalid int value", "icl-eval run --help")),
    ("shots-malformed", lambda d, c: run_builtin(d, c, "--shots", "1,,2"), ("--shots '1,,2'", "e.g. --shots 0,1,32")),
    ("shots-word", lambda d, c: run_builtin(d, c, "--shots", "few"), ("--shots 'few'", "non-negative integers")),
    ("shots-negative", lambda d, c: run_builtin(d, c, "--shots", "0,-1"), ("--shots '0,-1'", "must be >= 0")),
    ("batch-size-zero", lambda d, c: run_builtin(d, c, "--batch-size", "0"), ("--batch-size '0'", "positive integer or 'auto'")),
    ("conflicting-cache-options", lambda d, c: run_builtin(d, c, "--cache", str(d / "c.sqlite"), "--no-cache"), ("--cache", "--no-cache", "contradict", "give one of them")),
    ("unknown-option", lambda d, c: run_builtin(d, c, "--fewshots", "3"), ("unrecognized arguments: --fewshots", "--help")),
    ("missing-option", lambda d, c: ["run", "--tasks", "arithmetic_2da"], ("required: --model", "icl-eval run --help")),
    ("bad-choice", lambda d, c: run_builtin(d, c, "--bos", "sometimes"), ("--bos", "invalid choice: 'sometimes'")),
    ("prompt-index-out-of-range", lambda d, c: ["prompt", str(write_task(d)), "--index", "99", "--data-dir", str(d)], ("--index 99", "doc ids 0..4")),
    # --- files the run writes ---
    ("output-not-writable", _output_under_a_file, ("--output", "afile", "choose a writable --output")),
    ("corrupt-cache-file", _corrupt_cache, ("--cache", "bad.sqlite", "not a usable SQLite response cache", "--no-cache")),
]
if not torch.cuda.is_available():
    CASES.append(("no-cuda", lambda d, c: run_builtin(d, c, "--device", "cuda"), ("--device cuda", "no CUDA device", "use --device cpu")))

# --- runio: options that gave tracebacks, unknown devices, usage errors with one prefix --------------------------
CASES += [
    ("batch-size-superscript", lambda d, c: run_builtin(d, c, "--batch-size", "\u00b2"), ("--batch-size '\u00b2'", "positive integer or 'auto'")),
    ("batch-size-non-ascii-digit", lambda d, c: run_builtin(d, c, "--batch-size", "\u0663"), ("--batch-size '\u0663'", "positive integer or 'auto'")),
    ("output-empty", lambda d, c: ["run", "--model", str(c), "--tasks", "arithmetic_2da", "--output", ""], ("--output ''", "give a folder")),
    ("prompt-shots-negative", lambda d, c: ["prompt", "arithmetic_2da", "--shots", "-3"], ("--shots -3", "must be >= 0")),
    ("prompt-index-negative", lambda d, c: ["prompt", "arithmetic_2da", "--index", "-1"], ("--index -1", "doc ids 0..")),
    ("tasks-unknown-option", lambda d, c: ["tasks", "--data-dir", str(d)], ("unrecognized arguments: --data-dir", "see `icl-eval tasks --help`")),
]

# --- answer lists of closed-book QA data (icl_eval.answers, called from a task's field mapping) ---
_ALIAS_TASK = TASK.replace("  local: t.jsonl", '  local: t.jsonl\n  fields: {q: q, a: "canonical_alias(answers)"}')
_ALIAS_DATA = json.dumps({"q": "who?", "answers": ["Kit Carson"]}) + "\n" + json.dumps({"q": "what?", "answers": []}) + "\n"
CASES.extend([
    ("empty-alias-list", lambda d, c: run_task(d, c, task=_ALIAS_TASK, data=_ALIAS_DATA), ("t.jsonl (data.fields).a", "example 1", "non-empty list of answer aliases", "got []")),
    ("alias-list-is-a-string", lambda d, c: run_task(d, c, task=_ALIAS_TASK, data=json.dumps({"q": "who?", "answers": "Kit Carson"}) + "\n"), ("t.jsonl (data.fields).a", "example 0", "non-empty list", "'Kit Carson'")),
])


# --- the model and the cache: weights, vocabulary, folders, devices, damaged cache files ---


def _weights_edited(d: Path, ckpt: Path, change: Callable[[dict], dict]) -> Path:
    from safetensors.torch import load_file, save_file

    dst = checkpoint_copy(d, ckpt)
    save_file(change(load_file(str(dst / "model.safetensors"))), str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def _small_vocab(d: Path, ckpt: Path) -> Path:
    from icl_eval.models.tiny import tiny_gpt2

    dst = checkpoint_copy(d, ckpt, drop=lambda name: not name.startswith(("tokenizer", "vocab", "merges", "special")))
    tiny_gpt2(100, n_positions=64).save_pretrained(dst)  # a model of 100 tokens beside a tokenizer of many more
    return dst


def _folder_of_checkpoints(d: Path, ckpt: Path) -> Path:
    for step in ("step-100", "step-200"):
        shutil.copytree(ckpt, d / "runs" / step)
    return d / "runs"


def _zeroed_cache_pages(d: Path, ckpt: Path) -> list[str]:
    import sqlite3

    path = d / "zeroed.sqlite"
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE responses (key TEXT PRIMARY KEY, kind TEXT NOT NULL, value TEXT NOT NULL)")
        con.executemany("INSERT INTO responses VALUES (?, 'generate', ?)", [(f"k{i:06d}", "x" * 200) for i in range(400)])
    with open(path, "r+b") as f:
        f.seek(3 * 4096)
        f.write(b"\0" * 4 * 4096)
    return run_builtin(d, ckpt, "--cache", str(path))


MODEL_AND_CACHE_CASES: list[tuple[str, Callable[[Path, Path], list[str]], tuple[str, ...]]] = [
    ("weights-missing-tensor", lambda d, c: run_builtin(d, _weights_edited(d, c, lambda sd: {k: v for k, v in sd.items() if k != "transformer.ln_f.weight"})), ("--model", "1 missing (transformer.ln_f.weight)", "random numbers")),
    ("weights-renamed", lambda d, c: run_builtin(d, _weights_edited(d, c, lambda sd: {"base." + k: v for k, v in sd.items()})), ("--model", "missing (transformer.", "unexpected (base.transformer.")),
    ("vocab-smaller-than-tokenizer", lambda d, c: run_builtin(d, _small_vocab(d, c)), ("--model", "the tokenizer has", "config.json's vocab_size is 100", "use the tokenizer that belongs to this checkpoint")),
    ("model-folder-of-checkpoints", lambda d, c: run_builtin(d, _folder_of_checkpoints(d, c)), ("--model", "a folder of checkpoints", "step-100, step-200")),
    ("device-unknown", lambda d, c: run_builtin(d, c, "--device", "tpu9"), ("--device tpu9", "use cpu, cuda, cuda:N, mps or auto")),
    ("device-gpu", lambda d, c: run_builtin(d, c, "--device", "gpu"), ("--device gpu", "use --device cuda")),
    ("device-meta", lambda d, c: run_builtin(d, c, "--device", "meta"), ("--device meta", "holds no weights")),
    ("cache-zeroed-pages", _zeroed_cache_pages, ("--cache", "zeroed.sqlite", "damaged", "delete it", "--no-cache")),
]
CASES += MODEL_AND_CACHE_CASES


# --- suite: the release-specific readers (icl_eval/formats.py) -------------------------------------------------
def _race_archive(d: Path, passage: bytes | None) -> list[str]:
    import io
    import tarfile

    path = d / "race" / "RACE_test.tar.gz"
    path.parent.mkdir()
    if passage is None:
        path.write_bytes(b"not a tar archive at all")
    else:
        with tarfile.open(path, "w:gz") as tar:
            info = tarfile.TarInfo("RACE/test/high/1.txt")
            info.size = len(passage)
            tar.addfile(info, io.BytesIO(passage))
    return ["prompt", "race_h", "--data-dir", str(d)]


def _obqa_tsv(d: Path, body: str) -> list[str]:
    (d / "openbookqa" / "Main").mkdir(parents=True)
    (d / "openbookqa" / "Main" / "test.tsv").write_text(body)
    return ["prompt", "openbookqa", "--data-dir", str(d)]


OBQA_HEADER = "ID\tQuestion Stem\tChoices\tComplete Question\tAnswer Key\n"
CASES += [
    ("race-not-a-tar", lambda d, c: _race_archive(d, None), ("RACE_test.tar.gz", "not a readable tar archive", "re-download it")),
    ("race-passage-missing-key", lambda d, c: _race_archive(d, b'{"article": "A.", "questions": ["Q?"], "answers": ["A"]}'),
     ("RACE/test/high/1.txt", "needs article, questions, options and answers", "'options'")),
    ("race-answer-not-an-option", lambda d, c: _race_archive(d, b'{"article": "A.", "questions": ["Q?"], "options": [["x", "y"]], "answers": ["D"]}'),
     ("RACE/test/high/1.txt", "question 0", "answer 'D'", "2 option letters")),
    ("race-no-passages-of-the-level", lambda d, c: _race_archive(d, b"{}") and ["prompt", "race_m", "--data-dir", str(d)],
     ("RACE_test.tar.gz", "no RACE passages under a 'middle/' folder",)),
    ("openbookqa-no-header", lambda d, c: _obqa_tsv(d, "1\tq\t(A) x (B) y\tq\tA\n"), ("test.tsv", "expected OpenBookQA's header row")),
    ("openbookqa-bad-choices", lambda d, c: _obqa_tsv(d, OBQA_HEADER + "1\tq\tx or y\tq\tA\n"), ("test.tsv:2", "'(A) .. (B) ..' layout")),
    ("openbookqa-key-not-a-choice", lambda d, c: _obqa_tsv(d, OBQA_HEADER + "1\tq\t(A) x (B) y\tq\tE\n"), ("test.tsv:2", "answer key 'E'")),
]

# --- task groups and --shots fewshot (icl_eval/registry.py, task_config.py, shotplan.py) ---------------------------


def _group_dir(d: Path, ckpt: Path, group_files: dict[str, str], *extra: str, tasks: str = "g") -> list[str]:
    write_task(d)
    for name, text in group_files.items():
        (d / name).write_text(text)
    return ["run", "--model", str(ckpt), "--tasks", tasks, "--include-path", str(d), "--data-dir", str(d), "--output", str(d / "out"), *extra]


CASES += [
    ("group-tasks-not-a-list", lambda d, c: _group_dir(d, c, {"g.yaml": "group: g\ntasks: t\n"}), ("g.yaml", "'tasks' must be list")),
    ("group-unknown-key", lambda d, c: _group_dir(d, c, {"g.yaml": "group: g\ntask: [t]\n"}), ("g.yaml (a group file)", "unknown key 'task'", "did you mean 'tasks'")),
    ("group-empty", lambda d, c: _group_dir(d, c, {"g.yaml": "group: g\ntasks: []\n"}), ("g.yaml", "empty 'tasks' list")),
    ("group-yaml-syntax", lambda d, c: _group_dir(d, c, {"g.yaml": "group: g\ntasks: [t\n"}), ("g.yaml:", "YAML syntax error")),
    ("group-loop", lambda d, c: _group_dir(d, c, {"g.yaml": "group: g\ntasks: [h]\n", "h.yaml": "group: h\ntasks: [t, g]\n"}), ("includes 'g'", "g -> h -> g", "remove the loop")),
    ("group-named-like-a-task", lambda d, c: _group_dir(d, c, {"g.yaml": "group: t\ntasks: [arithmetic_2da]\n"}, tasks="t"), ("'t' names both a task and a group", "rename one")),
    ("group-nothing-available", lambda d, c: _group_dir(d, c, {"g.yaml": "group: g\ntasks: [coqa, drop]\n"}), ("--tasks g", "no task of it is available")),
    ("shots-fewshot-without-k", lambda d, c: run_task(d, c, "--shots", "0,fewshot"), ("--shots fewshot", "task 't'", "has no 'fewshot_k'", "fewshot_k: K")),
    ("fewshot-k-negative", lambda d, c: run_task(d, c, task=TASK + "fewshot_k: -1\n"), ("t.yaml", "'fewshot_k' must be >= 0")),
    ("fewshot-k-not-int", lambda d, c: run_task(d, c, task=TASK + "fewshot_k: many\n"), ("t.yaml", "'fewshot_k' must be int")),
    ("fewshot-k-over-pool", lambda d, c: run_task(d, c, "--shots", "fewshot", task=TASK + "fewshot_k: 10\n"), ("--shots 10 is larger than the few-shot pool",)),
]


def _fails_in_one_line(argv: list[str], needles, capsys) -> None:
    """Exit code 2 and exactly one `icl-eval: error:` line holding every needle; no traceback anywhere."""
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    lines = [line for line in err.splitlines() if line.startswith("icl-eval")]
    assert len(lines) == 1 and lines[0].startswith("icl-eval: error: "), err
    assert "Traceback" not in err and "Traceback" not in captured.out
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


@pytest.mark.parametrize("make_argv,needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(make_argv, needles, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may land in the working folder
    _fails_in_one_line(make_argv(tmp_path, tiny_checkpoint), needles, capsys)
    assert not (tmp_path / "pwned").exists()
    runs = [p for p in (tmp_path / "out").glob("*") if p.name != ".cache"]
    assert not runs, f"a failed run left folders behind: {runs}"


def test_the_catalogue_is_big_enough():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


# --- failures that flag or recover, and must not stop the run -------------------------------------------------


def _results(capsys) -> tuple[dict, Path]:
    out = capsys.readouterr().out
    path = Path(out.strip().splitlines()[-1])
    return json.loads(path.read_text()), path.parent


def _samples(run_dir: Path, name: str) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "samples" / name).read_text().splitlines()]


def test_nan_logits_are_flagged_not_scored(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    from icl_eval.models.hf import HFModel

    real_load = HFModel.load.__func__

    def load_with_nan_once(cls, *a, **k):
        model = real_load(cls, *a, **k)
        calls = [0]

        def poison(module, inputs, output):
            calls[0] += 1
            return output * float("nan") if calls[0] == 2 else output

        model.model.transformer.ln_f.register_forward_hook(poison)
        return model

    monkeypatch.setattr(HFModel, "load", classmethod(load_with_nan_once))
    assert main(run_builtin(tmp_path, tiny_checkpoint, "--limit", "5", "--batch-size", "1", "--no-cache")) == 0
    out = capsys.readouterr().out
    assert "arithmetic_2da 0-shot: 0 prompts lost demonstrations, 0 were left-truncated, 1 had NaN/inf logits (excluded)" in out
    run_dir = Path(out.strip().splitlines()[-1]).parent
    res = json.loads((run_dir / "results.json").read_text())
    assert res["records"][0]["n"] == 4 and res["tasks"]["arithmetic_2da"]["truncation"]["0"]["nonfinite"] == 1
    flagged = [s for s in _samples(run_dir, "arithmetic_2da_0shot.jsonl") if s.get("nonfinite")]
    assert len(flagged) == 1 and flagged[0]["metrics"] == {}


def test_out_of_memory_splits_the_batch_and_carries_on(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    from icl_eval.models.hf import HFModel

    assert main(run_builtin(tmp_path / "a", tiny_checkpoint, "--limit", "8", "--batch-size", "8", "--no-cache")) == 0
    _, plain = _results(capsys)
    real_score = HFModel._score_batch
    sizes = []

    def oom_when_big(self, rows):
        sizes.append(len(rows))
        if len(rows) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")
        return real_score(self, rows)

    monkeypatch.setattr(HFModel, "_score_batch", oom_when_big)
    assert main(run_builtin(tmp_path / "b", tiny_checkpoint, "--limit", "8", "--batch-size", "8", "--no-cache")) == 0
    res, split = _results(capsys)
    assert sizes[0] == 8 and sum(n for n in sizes if n <= 2) == 8 and res["records"][0]["n"] == 8
    for a, b in zip(_samples(plain, "arithmetic_2da_0shot.jsonl"), _samples(split, "arithmetic_2da_0shot.jsonl")):
        assert a["doc_id"] == b["doc_id"] and abs(a["loglikelihood"] - b["loglikelihood"]) < 1e-4


def test_prompt_over_the_context_with_zero_demonstrations_is_truncated_and_reported(tiny_checkpoint, tmp_path, capsys):
    # The paper's protocol: drop demonstrations first, then left-truncate the context; counted, reported, not fatal.
    data = "".join(json.dumps({"q": "word " * 700, "a": "yes"}) + "\n" for _ in range(3))
    assert main(run_task(tmp_path, tiny_checkpoint, "--shots", "0,1", "--no-cache", data=data)) == 0
    out = capsys.readouterr().out
    assert "note: t 0-shot: 0 prompts lost demonstrations, 3 were left-truncated" in out
    assert "note: t 1-shot: 3 prompts lost demonstrations, 3 were left-truncated" in out


def test_disk_full_while_writing_results_loses_nothing(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    real_fsync = os.fsync

    def full_disk_for_results(fd):
        if "results.json" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk_for_results)
    argv = run_builtin(tmp_path, tiny_checkpoint, "--shots", "0,1", "--limit", "4")
    assert main(argv) == 2
    (err,) = [line for line in capsys.readouterr().err.splitlines() if "icl-eval" in line]
    assert err.startswith("icl-eval: error: ")
    assert "results.json" in err and "No space left on device" in err and "free space" in err
    (run_dir,) = [p for p in (tmp_path / "out").iterdir() if p.name != ".cache"]
    assert sorted(p.name for p in run_dir.iterdir()) == ["samples"], "no results.json and no temporary file left behind"
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == ["arithmetic_2da_0shot.jsonl", "arithmetic_2da_1shot.jsonl"]

    monkeypatch.setattr(os, "fsync", real_fsync)  # space freed: the same command again computes nothing
    assert main(argv) == 0
    res, _ = _results(capsys)
    assert all(c == {"hits": 4, "misses": 0} for c in res["tasks"]["arithmetic_2da"]["cache"].values())


# --- compare: sample logs it cannot read (significance with --baseline, chance levels for --report) ------------


def _compare_with_samples(d: Path, sample_text: str, *options: str) -> list[str]:
    """Two runs of a one-task multiple-choice comparison; the first (smaller) run's sample log holds `sample_text`."""
    for model, text in (("a", sample_text), ("b", json.dumps({"doc_id": 0, "candidates": [{}, {}], "metrics": {"acc": 1.0}}) + "\n")):
        run = d / "runs" / model
        (run / "samples").mkdir(parents=True)
        (run / "samples" / "mc_0shot.jsonl").write_text(text)
        (run / "results.json").write_text(json.dumps({
            "model": {"name": model, "num_parameters": 1 if model == "a" else 2},
            "tasks": {"mc": {"output_type": "multiple_choice"}},
            "records": [{"task": "mc", "shots": 0, "metric": "acc", "value": 0.5}],
        }))
    return ["compare", str(d / "runs"), *options]


COMPARE_CASES: list[tuple[str, Callable[[Path], list[str]], tuple[str, ...]]] = [
    ("compare-corrupt-sample-line", lambda d: _compare_with_samples(d, '{"doc_id": 0,\n', "--baseline", "b"), ("mc_0shot.jsonl:1", "not valid JSON", "fix or remove that line")),
    ("compare-sample-not-an-object", lambda d: _compare_with_samples(d, "[1, 2]\n", "--baseline", "b"), ("mc_0shot.jsonl:1", "not a sample written by `icl-eval run`")),
    ("compare-sample-metrics-not-an-object", lambda d: _compare_with_samples(d, '{"doc_id": 0, "metrics": [1]}\n', "--baseline", "b"), ("mc_0shot.jsonl:1", "'metrics' object")),
    ("compare-report-corrupt-sample-line", lambda d: _compare_with_samples(d, '{"doc_id": 0,\n', "--report", str(d / "r.html")), ("mc_0shot.jsonl:1", "not valid JSON")),
]


@pytest.mark.parametrize("make_argv,needles", [c[1:] for c in COMPARE_CASES], ids=[c[0] for c in COMPARE_CASES])
def test_compare_bad_sample_logs_are_one_clear_line(make_argv, needles, tmp_path, capsys):
    argv = make_argv(tmp_path)
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.strip().splitlines() if line.startswith("icl-eval")]
    assert len(lines) == 1 and lines[0].startswith("icl-eval: error: "), captured.err
    assert "Traceback" not in captured.err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


# --- contamination: options, task fields and reports (one line, exit 2, before any model loads) -----------------


def _contamination(d: Path, *extra: str, task: str = TASK) -> list[str]:
    (d / "c.jsonl").write_text(json.dumps({"text": "a b c"}) + "\n")
    return ["contamination", "--tasks", str(write_task(d, task)), "--data-dir", str(d), "--corpus", str(d / "c.jsonl"),
            "--output", str(d / "out"), "--no-cache", *extra]


def _report(d: Path, text: str) -> Path:
    (d / "contamination.json").write_text(text)
    return d / "contamination.json"


GOOD_REPORT = {"report_version": 2, "tasks": {"t": {"n": 13, "examples": [{"doc_id": 0, "dirty": True}]}}}

CONTAMINATION_CASES: list[tuple[str, Callable[[Path, Path], list[str]], tuple[str, ...]]] = [
    ("ngram-superscript", lambda d, c: _contamination(d, "--ngram", "²"), ("--ngram '²'", "positive whole number", "'gpt3'")),
    ("ngram-zero", lambda d, c: _contamination(d, "--ngram", "0"), ("--ngram '0'", "positive whole number")),
    ("ngram-word", lambda d, c: _contamination(d, "--ngram", "thirteen"), ("--ngram 'thirteen'",)),
    ("workers-superscript", lambda d, c: _contamination(d, "--workers", "²"), ("--workers", "invalid int value: '²'")),
    ("workers-zero", lambda d, c: _contamination(d, "--workers", "0"), ("--workers 0", "must be >= 1")),
    ("boilerplate-zero", lambda d, c: _contamination(d, "--boilerplate", "0"), ("--boilerplate 0", "must be >= 1")),
    ("boilerplate-superscript", lambda d, c: _contamination(d, "--boilerplate", "¹⁰"), ("--boilerplate", "invalid int value")),
    ("seed-superscript", lambda d, c: _contamination(d, "--seed", "³"), ("--seed", "invalid int value")),
    ("contamination-fields-bad", lambda d, c: _contamination(d, task=TASK + "contamination_fields: everything\n"), ("t.yaml", "'contamination_fields'", "list of document fields", "input, target, both")),
    ("contamination-fields-empty", lambda d, c: _contamination(d, task=TASK + "contamination_fields: []\n"), ("t.yaml", "'contamination_fields'",)),
    ("contamination-field-missing", lambda d, c: _contamination(d, task=TASK + "contamination_fields: [question]\n"), ("t.yaml", "'contamination_fields' entry 'question'", "doc 0", "fields are: a, q")),
    ("contamination-field-not-text", lambda d, c: _contamination(d, task=TASK + "contamination_fields: [\"{'k': q}\"]\n"), ("t.yaml", "gives dict for doc 0", "name a text field")),
    ("run-report-truncated", lambda d, c: run_task(d, c, "--contamination", str(_report(d, json.dumps(GOOD_REPORT)[:30]))), ("--contamination", "contamination.json", "not a JSON report")),
    ("run-report-wrong-type", lambda d, c: run_task(d, c, "--contamination", str(_report(d, json.dumps({"tasks": {"t": {"n": 13, "examples": [{"doc_id": 0, "dirty": "yes"}]}}})))), ("contamination.json", "'tasks.t.examples[0].dirty' must be true or false")),
    ("run-report-missing-key", lambda d, c: run_task(d, c, "--contamination", str(_report(d, json.dumps({"tasks": {"t": {"examples": []}}})))), ("contamination.json", "'tasks.t' has no field 'n'")),
]


@pytest.mark.parametrize("make_argv,needles", [c[1:] for c in CONTAMINATION_CASES], ids=[c[0] for c in CONTAMINATION_CASES])
def test_contamination_bad_input_is_one_clear_line(make_argv, needles, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    from icl_eval.models.hf import HFModel

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(HFModel, "load", classmethod(lambda cls, *a, **k: pytest.fail("the model loaded before the bad input was refused")))
    _fails_in_one_line(make_argv(tmp_path, tiny_checkpoint), needles, capsys)
    assert not (tmp_path / "out" / "contamination.json").exists()


# --- hardening: task files, templates, data and generators that used to crash, leak or hang ------------------
# Each of these once gave a traceback, a silently wrong score, a file read from outside the task, or a hang.

MC_TASK = """name: t
output_type: multiple_choice
template: t.jinja
choices: "[a, b]"
gold: label
metrics: [acc]
data:
  local: t.jsonl
"""
MC_TEMPLATE = "{% block input %}{{ q }}{% endblock %}"
GEN_TASK = "name: t\noutput_type: loglikelihood\ntemplate: t.jinja\nmetrics: [acc]\ndata:\n  generator: arithmetic\n  generator_args: {ARGS}\n"
GEN_TEMPLATE = "{% block input %}{{ context }}{% endblock %}{% block target %}{{ completion }}{% endblock %}"
LAUGHS = "template_vars:\n  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"  {c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi")
)


def validate_task(d: Path, task: str = TASK, template: str = TEMPLATE, data: str | None = None) -> list[str]:
    return ["validate", str(write_task(d, task, template, data)), "--data-dir", str(d)]


def _jsonl(*docs: dict) -> str:
    return "".join(json.dumps(x) + "\n" for x in docs)


def _symlink_include(d: Path, ckpt: Path) -> list[str]:
    secret = d.parent / f"{d.name}-secret.txt"
    secret.write_text("SECRET")
    (d / "leak").symlink_to(secret)
    return validate_task(d, template=TEMPLATE.replace("{{ q }}", "{% include 'leak' %}"))


def _symlink_template(d: Path, ckpt: Path) -> list[str]:
    argv = validate_task(d)
    secret = d.parent / f"{d.name}-secret.jinja"
    secret.write_text(TEMPLATE)
    (d / "t.jinja").unlink()
    (d / "t.jinja").symlink_to(secret)
    return argv


def _data_symlink_out(d: Path, ckpt: Path) -> list[str]:
    argv = validate_task(d)
    secret = d.parent / f"{d.name}-secret.jsonl"
    secret.write_text(_jsonl(*DOCS))
    (d / "t.jsonl").unlink()
    (d / "t.jsonl").symlink_to(secret)
    return argv


def _data_traversal(d: Path, ckpt: Path) -> list[str]:
    (d.parent / f"{d.name}-secret.jsonl").write_text(_jsonl(*DOCS))
    return validate_task(d, task=TASK.replace("local: t.jsonl", f"local: ../{d.name}-secret.jsonl"))


def _same_name_twice(d: Path, ckpt: Path) -> list[str]:
    for sub in ("a", "b"):
        (d / sub).mkdir()
        write_task(d / sub)
    return ["run", "--model", str(ckpt), "--tasks", "t", "--include-path", str(d / "a"), "--include-path", str(d / "b"), "--data-dir", str(d / "a"), "--output", str(d / "out")]


def _latin1_task(d: Path, ckpt: Path) -> list[str]:
    argv = validate_task(d)
    (d / "t.yaml").write_bytes((TASK + 'description: "caf\xe9"\n').encode("latin-1"))
    return argv


def _utf16_task(d: Path, ckpt: Path) -> list[str]:
    argv = validate_task(d)
    (d / "t.yaml").write_bytes(TASK.encode("utf-16"))
    return argv


def _latin1_template(d: Path, ckpt: Path) -> list[str]:
    argv = validate_task(d)
    (d / "t.jinja").write_bytes(TEMPLATE.replace("Q:", "Qu\xe9:").encode("latin-1"))
    return argv


def _corrupt_zst(d: Path, ckpt: Path) -> list[str]:
    (d / "t.jsonl.zst").write_bytes(b"\x28\xb5\x2f\xfd" + b"not zstd at all, truncated" * 3)
    return validate_task(d, task=TASK.replace("local: t.jsonl", "local: t.jsonl.zst"))


HARDENING_CASES: list[tuple[str, Callable[[Path, Path], list[str]], tuple[str, ...]]] = [
    # --- security: reading outside the task, writing outside --output, expansion bombs ---
    ("include-symlink-outside", _symlink_include, ("leak", "resolves to", "outside the task's template folders")),
    ("template-symlink-outside", _symlink_template, ("t.jinja", "resolves to", "outside the task's template folders")),
    ("data-symlink-outside", _data_symlink_out, ("data.local", "'t.jsonl' resolves to", "outside the data root")),
    ("data-path-traversal", _data_traversal, ("data.local", "outside the data root", "absolute path")),
    ("name-traversal", lambda d, c: run_task(d, c, task=TASK.replace("name: t", "name: ../../escaped")), ("t.yaml", "'../../escaped' is not a valid task name", "letters, digits, '_', '.' or '-'")),
    ("name-absolute", lambda d, c: run_task(d, c, task=TASK.replace("name: t", "name: /tmp/x")), ("t.yaml", "'/tmp/x' is not a valid task name")),
    ("name-hidden", lambda d, c: validate_task(d, task=TASK.replace("name: t", "name: .t")), ("'.t' is not a valid task name", "starting with a letter, digit or '_'")),
    ("yaml-billion-laughs", lambda d, c: run_task(d, c, task=TASK + LAUGHS), ("t.yaml", "YAML aliases expand to over 100,000 values", "MAX_YAML_NODES")),
    ("template-int-bomb", lambda d, c: run_task(d, c, template=TEMPLATE.replace("{{ q }}", "{{ 9**(9**9) }}")), ("t.jinja", "block 'input'", "doc 0", "MAX_INT_BITS")),
    ("template-lipsum-bomb", lambda d, c: validate_task(d, template=TEMPLATE.replace("{{ q }}", "{{ lipsum(n=3000000) }}")), ("t.jinja", "lipsum(n=3000000", "limit of 100 paragraphs")),
    ("template-string-bomb", lambda d, c: validate_task(d, template=TEMPLATE.replace("{{ q }}", "{{ 'x' * 10**10 }}")), ("t.jinja", "10,000,000,000", "limit of 4,000,000", "MAX_CHARS")),
    # --- silently wrong results ---
    ("same-name-two-folders", _same_name_twice, ("task name 't' is defined twice", "a/t.yaml", "b/t.yaml", "rename one")),
    ("gold-fraction", lambda d, c: validate_task(d, task=MC_TASK, template=MC_TEMPLATE, data=_jsonl({"q": "x", "a": "1", "b": "2", "label": 1.7})), ("t.yaml", "'gold: label'", "integer choice index", "1.7", "doc 0")),
    ("gold-infinite", lambda d, c: validate_task(d, task=MC_TASK.replace("gold: label", 'gold: "label | float"'), template=MC_TEMPLATE, data=_jsonl({"q": "x", "a": "1", "b": "2", "label": "Infinity"})), ("t.yaml", "integer choice index", "inf", "doc 0")),
    ("gold-json-infinity", lambda d, c: validate_task(d, task=MC_TASK, template=MC_TEMPLATE, data='{"q": "x", "a": "1", "b": "2", "label": Infinity}\n'), ("t.jsonl:1", "Infinity is not valid JSON")),
    ("empty-target", lambda d, c: validate_task(d, data=_jsonl({"q": "x", "a": "1"}, {"q": "y", "a": ""})), ("t.jinja", "block 'target'", "doc 1", "rendered empty")),
    ("null-choice", lambda d, c: validate_task(d, task=MC_TASK, template=MC_TEMPLATE, data=_jsonl({"q": "x", "a": "1", "b": None, "label": 0})), ("t.yaml", "'choices: [a, b]'", "None as item 1", "doc 0")),
    # --- tracebacks where one line was promised: task files ---
    ("task-file-latin1", _latin1_task, ("t.yaml", "not UTF-8", "save it as UTF-8")),
    ("task-file-utf16", _utf16_task, ("t.yaml", "UTF-16", "save it as UTF-8")),
    ("template-latin1", _latin1_template, ("t.jinja", "template is not UTF-8", "save it as UTF-8")),
    ("yaml-recursive-alias", lambda d, c: validate_task(d, task=TASK + "template_vars: &r {x: *r}\n"), ("t.yaml:7", "recursive YAML alias")),
    # --- data ---
    ("data-lone-surrogate", lambda d, c: validate_task(d, data=_jsonl(DOCS[0]) + '{"q": "\\ud800", "a": "1"}\n'), ("t.jsonl:2", "lone UTF-16 surrogate")),
    ("data-nested-deep", lambda d, c: validate_task(d, data=_jsonl(DOCS[0]) + '{"q": ' + "[" * 100_000 + "]" * 100_000 + "}\n"), ("t.jsonl:2", "nested too deeply")),
    ("data-corrupt-zst", _corrupt_zst, ("t.jsonl.zst", "cannot read data file", "re-download it")),
    # --- generators ---
    ("generator-unknown-op", lambda d, c: validate_task(d, task=GEN_TASK.replace("{ARGS}", "{op: divide}"), template=GEN_TEMPLATE), ("generator 'arithmetic'", "op 'divide'", "plus, minus, times, three_ops")),
    ("generator-zero-docs", lambda d, c: validate_task(d, task=GEN_TASK.replace("{ARGS}", "{op: plus, n: 0}"), template=GEN_TEMPLATE), ("generator 'arithmetic'", "generator_args.n", "from 1 to", "got 0")),
    # --- validate reads every document, not only the first ---
    ("validate-later-document", lambda d, c: validate_task(d, data=_jsonl(*DOCS[:3], {"q": "x"}, DOCS[4])), ("t.jinja", "block 'target'", "doc 3", "'a' is undefined")),
]


@pytest.mark.parametrize("make_argv,needles", [c[1:] for c in HARDENING_CASES], ids=[c[0] for c in HARDENING_CASES])
def test_hardening_bad_input_is_one_clear_line(make_argv, needles, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    test_bad_input_is_one_clear_line(make_argv, needles, tiny_checkpoint, tmp_path, capsys, monkeypatch)
    assert "SECRET" not in capsys.readouterr().out


def test_unreadable_template_is_one_line(tmp_path, capsys, monkeypatch):
    import builtins

    from icl_eval import prompts

    real_open = builtins.open

    def refuse(path, *a, **k):  # chmod 000 does not stop root, so the refusal is simulated
        if str(path).endswith("t.jinja"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(prompts, "open", refuse, raising=False)
    assert main(validate_task(tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("icl-eval: error: ") and "\n" not in err
    assert "t.jinja: cannot read template (Permission denied)" in err


def test_repeated_task_runs_once(tiny_checkpoint, tmp_path, capsys):
    path = str(write_task(tmp_path))
    assert main(["run", "--model", str(tiny_checkpoint), "--tasks", f"{path},{path}", "--data-dir", str(tmp_path), "--output", str(tmp_path / "out"), "--no-cache"]) == 0
    res, _ = _results(capsys)
    assert res["settings"]["tasks"] == ["t"] and len(res["records"]) == 1


def test_a_user_task_may_shadow_a_builtin(tmp_path):
    from icl_eval.registry import discover

    write_task(tmp_path, task=TASK.replace("name: t", "name: lambada"))
    assert discover([str(tmp_path)])["lambada"].path == str(tmp_path / "t.yaml")


# --- reading comprehension: the official CoQA / DROP / QuAC / SQuAD v2 layouts (icl_eval/formats_rc.py) ----------
def _rc_file(d: Path, task: str, rel: str, content: object | str) -> list[str]:
    (d / rel).parent.mkdir(parents=True)
    (d / rel).write_text(content if isinstance(content, str) else json.dumps(content))
    return ["prompt", task, "--data-dir", str(d)]


_COQA = "coqa/coqa-dev-v1.0.json"
_SQUAD = "squad_v2/dev-v2.0.json"
RC_CASES: list[tuple[str, Callable[[Path, Path], list[str]], tuple[str, ...]]] = [
    ("coqa-not-json", lambda d, c: _rc_file(d, "coqa", _COQA, '{"data": [\n{"story": '), ("coqa-dev-v1.0.json:2", "not valid JSON", "re-download")),
    ("coqa-no-data", lambda d, c: _rc_file(d, "coqa", _COQA, {"version": "1.0"}), ("coqa-dev-v1.0.json", "missing field 'data'", "official layout")),
    ("coqa-story-missing", lambda d, c: _rc_file(d, "coqa", _COQA, {"data": [{"id": "s", "questions": [], "answers": []}]}),
     ("coqa-dev-v1.0.json: data[0]", "missing field 'story'")),
    ("coqa-turns-differ", lambda d, c: _rc_file(d, "coqa", _COQA, {"data": [{"id": "s", "story": "x", "questions": [{"input_text": "q?", "turn_id": 1}], "answers": []}]}),
     ("coqa-dev-v1.0.json: data[0]", "turn_ids", "differ")),
    ("coqa-answer-text-not-a-string", lambda d, c: _rc_file(d, "coqa", _COQA, {"data": [{"id": "s", "story": "x", "questions": [{"input_text": "q?"}], "answers": [{"input_text": 3}]}]}),
     ("data[0].answers[0].input_text", "expected str, got int")),
    ("drop-not-keyed-by-passage", lambda d, c: _rc_file(d, "drop", "drop/drop_dataset_dev.json", [{"passage": "p"}]),
     ("drop_dataset_dev.json", "keyed by passage id", "got list")),
    ("drop-answer-missing", lambda d, c: _rc_file(d, "drop", "drop/drop_dataset_dev.json", {"p1": {"passage": "p", "qa_pairs": [{"question": "q?", "query_id": "1"}]}}),
     ("drop_dataset_dev.json: p1.qa_pairs[0]", "missing field 'answer'")),
    ("quac-orig-answer-missing", lambda d, c: _rc_file(d, "quac", "quac/val_v0.2.json", {"data": [{"title": "T", "paragraphs": [{"context": "c", "qas": [{"question": "q?", "answers": []}]}]}]}),
     ("val_v0.2.json: data[0].paragraphs[0].qas[0]", "missing field 'orig_answer'")),
    ("squad-paragraphs-not-a-list", lambda d, c: _rc_file(d, "squad_v2", _SQUAD, {"data": [{"title": "T", "paragraphs": {"context": "c"}}]}),
     ("dev-v2.0.json: data[0].paragraphs", "expected list, got dict")),
    ("squad-answerable-without-answers", lambda d, c: _rc_file(d, "squad_v2", _SQUAD, {"data": [{"title": "T", "paragraphs": [{"context": "c", "qas": [{"question": "q?", "id": "1", "answers": [], "is_impossible": False}]}]}]}),
     ("dev-v2.0.json: data[0].paragraphs[0].qas[0]", "is_impossible is false")),
]


@pytest.mark.parametrize("make_argv,needles", [c[1:] for c in RC_CASES], ids=[c[0] for c in RC_CASES])
def test_reading_comprehension_bad_input_is_one_clear_line(make_argv, needles, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("icl_eval.data.hub_reachable", lambda: False)  # a bad local file must never fall through to the hub
    test_bad_input_is_one_clear_line(make_argv, needles, tiny_checkpoint, tmp_path, capsys, monkeypatch)


# --- --backend openai: server options refused before any request (icl_eval/models/openai_server.py) -------------
def _openai_run(d: Path, *extra: str) -> list[str]:
    return ["run", "--tasks", "arithmetic_2da", "--limit", "1", "--output", str(d / "out"), "--model", "served", *extra]


SERVER_CASES: list[tuple[str, Callable[[Path, Path], list[str]], tuple[str, ...]]] = [
    ("openai-no-base-url", lambda d, c: _openai_run(d, "--backend", "openai"), ("--backend openai needs --base-url",)),
    ("openai-base-url-with-hf", lambda d, c: _openai_run(d, "--base-url", "http://127.0.0.1:9/v1"), ("--base-url", "options of --backend openai", "--backend hf")),
    ("openai-bad-scheme", lambda d, c: _openai_run(d, "--backend", "openai", "--base-url", "127.0.0.1:8000/v1"), ("--base-url 127.0.0.1:8000/v1", "http://")),
    ("openai-key-env-unset", lambda d, c: _openai_run(d, "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1", "--api-key-env", "ICL_EVAL_NO_SUCH_KEY"),
     ("--api-key-env ICL_EVAL_NO_SUCH_KEY", "not set")),
    ("openai-concurrency-zero", lambda d, c: _openai_run(d, "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1", "--concurrency", "0"), ("--concurrency 0", "positive")),
    ("openai-bos-policy", lambda d, c: _openai_run(d, "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1", "--bos", "always"), ("--bos always", "the server decides")),
    ("openai-batch-size", lambda d, c: _openai_run(d, "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1", "--batch-size", "4"), ("--batch-size 4", "--concurrency")),
]


@pytest.mark.parametrize("make_argv,needles", [c[1:] for c in SERVER_CASES], ids=[c[0] for c in SERVER_CASES])
def test_server_backend_bad_input_is_one_clear_line(make_argv, needles, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    test_bad_input_is_one_clear_line(make_argv, needles, tiny_checkpoint, tmp_path, capsys, monkeypatch)


# --- the SuperGLUE kinds (binary_choice_group, entity_choice, judged_completion) and their readers --------------
def _sg_files(d: Path, task: str, rel: str, content: object | str, pool_rel: str | None = None) -> list[str]:
    for path in (rel, pool_rel):
        if path:
            (d / path).parent.mkdir(parents=True, exist_ok=True)
            (d / path).write_text(content if isinstance(content, str) else json.dumps(content))
    return ["prompt", task, "--data-dir", str(d)]


def _kind_task(d: Path, body: str, metric: str = "acc") -> list[str]:
    (d / "k.jinja").write_text("{% block input %}q{% endblock %}{% block target %}a{% endblock %}")
    (d / "k.yaml").write_text(f"name: k\ntemplate: k.jinja\nmetrics: [{metric}]\ndata: {{local: x.jsonl}}\n{body}")
    return ["validate", str(d / "k.yaml")]


def _record_answer_not_an_entity(d: Path) -> list[str]:
    pool = {"passage": {"text": "Ann", "entities": [{"start": 0, "end": 2}]}, "qas": [{"query": "@placeholder", "answers": [{"text": "Ann"}]}]}
    _sg_files(d, "record", _REC_POOL, json.dumps(pool) + "\n")
    dev = {"data": [{"passage": {"text": "Ann met Bo", "entities": [{"start": 0, "end": 2}]},
                     "qas": [{"id": "1", "query": "@placeholder left", "answers": [{"text": "Bo"}]}]}]}
    return _sg_files(d, "record", _REC, dev)


_REC = "superglue/ReCoRD/dev.json"
_REC_POOL = "superglue/FewGLUE/ReCoRD/train.jsonl"
_MRC = "superglue/MultiRC/val.jsonl"
SUPERGLUE_KIND_CASES: list[tuple[str, Callable[[Path, Path], list[str]], tuple[str, ...]]] = [
    ("record-not-json", lambda d, c: _sg_files(d, "record", _REC, '{"data": [', _REC_POOL), ("dev.json", "not valid JSON", "re-download")),
    ("record-no-data-list", lambda d, c: _sg_files(d, "record", _REC, {"version": "1.0"}, _REC_POOL), ("dev.json", "official release layout")),
    ("record-qas-missing", lambda d, c: _sg_files(d, "record", _REC, {"data": [{"passage": {"text": "t", "entities": []}}]}, _REC_POOL),
     ("dev.json: record 0", "qas[]")),
    ("record-answer-not-an-entity", lambda d, c: _record_answer_not_an_entity(d), ("doc 0", "none of the answers", "among its 1 candidates")),
    ("multirc-answer-without-label", lambda d, c: _sg_files(d, "multirc", _MRC, '{"idx": 0, "passage": {"text": "t", "questions": [{"idx": 0, "question": "q", "answers": [{"text": "a"}]}]}}\n'),
     ("val.jsonl: record 0", "text and label")),
    ("entity-choice-without-references", lambda d, c: _kind_task(d, "output_type: entity_choice\nchoices: ents\n"), ("k.yaml", "needs 'references'")),
    ("grouped-choice-without-gold", lambda d, c: _kind_task(d, "output_type: binary_choice_group\nchoices: answers\n"), ("k.yaml", "needs 'gold'")),
    ("judged-completion-with-choices", lambda d, c: _kind_task(d, "output_type: judged_completion\ngold: label\nchoices: x\n"), ("k.yaml", "'choices' does not apply")),
    ("f1a-on-multiple-choice", lambda d, c: _kind_task(d, "output_type: multiple_choice\nchoices: x\ngold: g\n", metric="f1a"),
     ("k.yaml", "metric 'f1a' does not apply to output_type multiple_choice")),
]


@pytest.mark.parametrize("make_argv,needles", [c[1:] for c in SUPERGLUE_KIND_CASES], ids=[c[0] for c in SUPERGLUE_KIND_CASES])
def test_superglue_kinds_bad_input_is_one_clear_line(make_argv, needles, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("icl_eval.data.hub_reachable", lambda: False)
    test_bad_input_is_one_clear_line(make_argv, needles, tiny_checkpoint, tmp_path, capsys, monkeypatch)


# --- GGUF checkpoints (icl_eval/models/gguf.py) ------------------------------------------------------------------
def _gguf(d: Path, name: str = "m.gguf", **kw) -> Path:
    from gguf_files import write_tiny_llama_gguf

    return write_tiny_llama_gguf(d / name, **kw)


def _two_ggufs(d: Path, ckpt: Path) -> list[str]:
    (d / "models").mkdir()
    _gguf(d / "models", "a.gguf")
    _gguf(d / "models", "b.gguf", seed=1)
    return run_builtin(d, d / "models")


def _not_gguf(d: Path, ckpt: Path) -> list[str]:
    (d / "m.gguf").write_bytes(b"<html>404 Not Found</html>" * 10)
    return run_builtin(d, d / "m.gguf")


def _gguf_without_package(d: Path, ckpt: Path) -> list[str]:
    import sys

    path = _gguf(d)
    sys.modules["gguf"] = None  # type: ignore[assignment]  # as if not installed; the test's monkeypatch restores it
    return run_builtin(d, path)


GGUF_CASES: list[tuple[str, Callable[[Path, Path], list[str]], tuple[str, ...]]] = [
    ("gguf-missing-file", lambda d, c: run_builtin(d, d / "nothere.gguf"), ("nothere.gguf", "no such GGUF file")),
    ("gguf-two-in-folder", _two_ggufs, ("models", "holds 2 GGUF files", "a.gguf, b.gguf", "give the one to evaluate")),
    ("gguf-not-a-gguf", _not_gguf, ("m.gguf", "not a readable GGUF file", "check the download")),
    ("gguf-unknown-architecture", lambda d, c: run_builtin(d, _gguf(d, architecture="mamba9")), ("m.gguf", "cannot read GGUF architecture 'mamba9'", "it reads", "llama")),
    ("gguf-package-missing", _gguf_without_package, ("m.gguf", "needs the gguf package", "icl-eval[gguf]")),
]


@pytest.mark.parametrize("make_argv,needles", [c[1:] for c in GGUF_CASES], ids=[c[0] for c in GGUF_CASES])
def test_gguf_bad_input_is_one_clear_line(make_argv, needles, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    pytest.importorskip("gguf")
    import sys

    monkeypatch.setitem(sys.modules, "gguf", sys.modules["gguf"])  # restored after _gguf_without_package
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    test_bad_input_is_one_clear_line(make_argv, needles, tiny_checkpoint, tmp_path, capsys, monkeypatch)
    converted = list((tmp_path / "xdg" / "icl-eval" / "gguf").glob("*/*"))
    assert not converted, f"a failed conversion left files behind: {converted}"


# --- chat templates (--chat-template, --fewshot-as-multiturn; icl_eval/chat.py) -------------------------------------
CHAT_TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
ROLLING_TASK = """name: r
output_type: loglikelihood_rolling
template: r.jinja
metrics: [word_perplexity]
data:
  local: t.jsonl
"""


def _chat_checkpoint(d: Path, ckpt: Path, template: str = CHAT_TEMPLATE) -> Path:
    from transformers import AutoTokenizer

    copy = checkpoint_copy(d, ckpt)
    tok = AutoTokenizer.from_pretrained(copy)
    tok.chat_template = template
    tok.save_pretrained(copy)
    return copy


def _rolling_task(d: Path, ckpt: Path) -> list[str]:
    (d / "r.yaml").write_text(ROLLING_TASK)
    (d / "r.jinja").write_text("{% block input %}{{ q }}{% endblock %}")
    write_task(d)
    return ["run", "--model", str(_chat_checkpoint(d, ckpt)), "--tasks", str(d / "r.yaml"), "--data-dir", str(d), "--output", str(d / "out"), "--chat-template"]


CHAT_CASES: list[tuple[str, Callable[[Path, Path], list[str]], tuple[str, ...]]] = [
    ("multiturn-without-chat", lambda d, c: run_builtin(d, c, "--fewshot-as-multiturn"), ("--fewshot-as-multiturn needs --chat-template",)),
    ("multiturn-at-zero-shots", lambda d, c: run_builtin(d, _chat_checkpoint(d, c), "--chat-template", "--fewshot-as-multiturn", "--shots", "0"),
     ("--fewshot-as-multiturn with --shots 0", "no demonstrations", "shot count >= 1")),
    ("base-tokenizer-has-no-template", lambda d, c: run_builtin(d, c, "--chat-template"),
     ("--chat-template: the tokenizer of", "tiny-gpt2", "no chat template", "drop --chat-template")),
    ("broken-chat-template", lambda d, c: run_builtin(d, _chat_checkpoint(d, c, "{% for m in messages %}{{ m.content.nope() }}{% endfor %}"), "--chat-template"),
     ("--chat-template: the chat template of", "fails on a one-turn conversation", "fix the tokenizer's chat_template")),
    ("multiturn-template-drops-answers", lambda d, c: run_builtin(
        d, _chat_checkpoint(d, c, "{% for m in messages %}{% if m.role != 'assistant' %}{{ m.content }}{% endif %}{% endfor %}"), "--chat-template", "--fewshot-as-multiturn", "--shots", "1"),
     ("--fewshot-as-multiturn", "leaves out earlier assistant turns", "drop --fewshot-as-multiturn")),
    ("rolling-task-with-chat", _rolling_task, ("--chat-template: task 'r' (loglikelihood_rolling)", "no turns", "without --chat-template")),
    ("openai-chat-without-tokenizer", lambda d, c: _openai_run(d, "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1", "--chat-template"),
     ("--chat-template with --backend openai needs --tokenizer",)),
    ("prompt-chat-without-tokenizer", lambda d, c: ["prompt", "arithmetic_2da", "--chat-template"], ("--chat-template needs --tokenizer PATH_OR_ID",)),
    ("prompt-tokenizer-without-chat", lambda d, c: ["prompt", "arithmetic_2da", "--tokenizer", str(c)], ("--tokenizer", "only used with --chat-template")),
]


@pytest.mark.parametrize("make_argv,needles", [c[1:] for c in CHAT_CASES], ids=[c[0] for c in CHAT_CASES])
def test_chat_template_bad_input_is_one_clear_line(make_argv, needles, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    test_bad_input_is_one_clear_line(make_argv, needles, tiny_checkpoint, tmp_path, capsys, monkeypatch)


# --- --backend vllm: engine options, refused before an engine starts (icl_eval/models/vllm_engine.py) ------------

def _vllm_missing(d: Path, ckpt: Path) -> list[str]:
    import sys

    sys.modules["vllm"] = None  # type: ignore[assignment]  # as if not installed; the test's monkeypatch restores it
    return run_builtin(d, ckpt, "--backend", "vllm")


VLLM_CASES: list[tuple[str, Callable[[Path, Path], list[str]], tuple[str, ...]]] = [
    ("vllm-model-args-to-hf", lambda d, c: run_builtin(d, c, "--model-args", "enforce_eager=true"), ("--model-args", "options of --backend vllm", "not of --backend hf")),
    ("vllm-tensor-parallel-to-openai", lambda d, c: run_builtin(d, c, "--backend", "openai", "--base-url", "http://localhost:1/v1", "--tensor-parallel-size", "2"), ("--tensor-parallel-size", "options of --backend vllm")),
    ("vllm-model-args-not-key-value", lambda d, c: run_builtin(d, c, "--backend", "vllm", "--model-args", "enforce_eager"), ("--model-args enforce_eager", "is not key=value")),
    ("vllm-not-installed", _vllm_missing, ("--backend vllm", "vLLM is not installed", "pip install 'icl-eval[vllm")),
]
VLLM_ENGINE_CASES: list[tuple[str, Callable[[Path, Path], list[str]], tuple[str, ...]]] = [
    ("vllm-unknown-model-arg", lambda d, c: run_builtin(d, c, "--backend", "vllm", "--model-args", "enforce_eagre=true"), ("enforce_eagre", "not a vLLM engine argument")),
    ("vllm-model-arg-of-an-option", lambda d, c: run_builtin(d, c, "--backend", "vllm", "--model-args", "dtype=float16"), ("--model-args dtype", "set by --dtype")),
    ("vllm-batch-size", lambda d, c: run_builtin(d, c, "--backend", "vllm", "--batch-size", "4"), ("--batch-size 4", "vLLM schedules its own batches")),
    ("vllm-device-map", lambda d, c: run_builtin(d, c, "--backend", "vllm", "--device-map", "auto"), ("--device-map auto", "--tensor-parallel-size")),
]


@pytest.mark.parametrize("make_argv,needles", [c[1:] for c in VLLM_CASES], ids=[c[0] for c in VLLM_CASES])
def test_vllm_bad_input_is_one_clear_line(make_argv, needles, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "vllm", sys.modules.get("vllm"))  # restored after _vllm_missing
    if sys.modules["vllm"] is None:
        monkeypatch.delitem(sys.modules, "vllm")
    test_bad_input_is_one_clear_line(make_argv, needles, tiny_checkpoint, tmp_path, capsys, monkeypatch)


@pytest.mark.parametrize("make_argv,needles", [c[1:] for c in VLLM_ENGINE_CASES], ids=[c[0] for c in VLLM_ENGINE_CASES])
def test_vllm_engine_options_refused_before_it_starts(make_argv, needles, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    from icl_eval.models.vllm_imports import import_vllm

    try:
        import_vllm()
    except ImportError:
        pytest.skip("vllm does not import")
    test_bad_input_is_one_clear_line(make_argv, needles, tiny_checkpoint, tmp_path, capsys, monkeypatch)

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
    ("device-tpu9", lambda d, c: run_builtin(d, c, "--device", "tpu9"), ("--device tpu9: unknown device; use cpu, cuda, cuda:N or auto",)),
    ("device-gpu", lambda d, c: run_builtin(d, c, "--device", "gpu"), ("--device gpu: unknown device",)),
    ("device-meta", lambda d, c: run_builtin(d, c, "--device", "meta"), ("--device meta: unknown device",)),
    ("output-empty", lambda d, c: ["run", "--model", str(c), "--tasks", "arithmetic_2da", "--output", ""], ("--output ''", "give a folder")),
    ("prompt-shots-negative", lambda d, c: ["prompt", "arithmetic_2da", "--shots", "-3"], ("--shots -3", "must be >= 0")),
    ("prompt-index-negative", lambda d, c: ["prompt", "arithmetic_2da", "--index", "-1"], ("--index -1", "doc ids 0..")),
    ("tasks-unknown-option", lambda d, c: ["tasks", "--data-dir", str(d)], ("unrecognized arguments: --data-dir", "see `icl-eval tasks --help`")),
]


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

@pytest.mark.parametrize("make_argv,needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(make_argv, needles, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may land in the working folder
    argv = make_argv(tmp_path, tiny_checkpoint)
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    lines = [line for line in err.splitlines() if line.startswith("icl-eval")]
    assert len(lines) == 1 and lines[0].startswith("icl-eval: error: "), err
    assert "Traceback" not in err and "Traceback" not in captured.out
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
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

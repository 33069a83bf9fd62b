"""Resumable runs: a real run killed with SIGKILL midway, rerun, recomputes nothing finished and matches exactly."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from icl_eval.cache import CachedModel, ResponseCache, default_path
from icl_eval.cli import main
from icl_eval.requests import GenerationRequest, GenerationResult, LoglikelihoodRequest, LoglikelihoodResult, RollingRequest, RollingResult

REPO = Path(__file__).resolve().parent.parent

GEN_TASK = """
name: echo_gen
output_type: generate
template: echo_gen.jinja
metrics: [exact_match]
max_new_tokens: {max_new_tokens}
until: ["\\n"]
data:
  local: words.jsonl
"""
GEN_TEMPLATE = "{% block input %}Repeat {{ word }}:{% endblock %}{% block target %}{{ word }}{% endblock %}"
WORDS = ["apple", "pear", "plum", "fig", "kiwi", "lime", "date", "grape", "melon", "peach", "mango", "guava"]


@pytest.fixture()
def task_dir(tmp_path) -> Path:
    d = tmp_path / "tasks"
    d.mkdir()
    (d / "echo_gen.yaml").write_text(GEN_TASK.format(max_new_tokens=6))
    (d / "echo_gen.jinja").write_text(GEN_TEMPLATE)
    (d / "words.jsonl").write_text("".join(json.dumps({"word": w}) + "\n" for w in WORDS))
    return d


def _argv(ckpt: Path, task_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "run", "--model", str(ckpt), "--tasks", f"arithmetic_2da,{task_dir / 'echo_gen.yaml'}", "--shots", "0,2",
        "--limit", "12", "--batch-size", "3", "--data-dir", str(task_dir), "--output", str(out), *extra,
    ]


def _small_argv(ckpt: Path, task_dir: Path, out: Path, *extra: str) -> list[str]:
    """Two tasks, few requests: for the tests that count hits and misses over many runs."""
    return ["run", "--model", str(ckpt), "--tasks", f"arithmetic_2da,{task_dir / 'echo_gen.yaml'}", "--limit", "4", "--data-dir", str(task_dir), "--output", str(out), *extra]


def _run(argv: list[str], capsys) -> Path:
    assert main(argv) == 0
    return Path(capsys.readouterr().out.strip().splitlines()[-1]).parent


def _count_rows(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    except sqlite3.OperationalError:  # the table is not created yet
        return 0


def _comparable(run_dir: Path) -> tuple[dict, dict]:
    """Records, per-task metadata (minus cache counters and timings) and every sample file: what must not change on resume."""
    res = json.loads((run_dir / "results.json").read_text())
    tasks = {name: {k: v for k, v in info.items() if k not in ("cache", "seconds")} for name, info in res["tasks"].items()}
    samples = {p.name: p.read_text() for p in sorted((run_dir / "samples").iterdir())}
    return {"records": res["records"], "tasks": tasks}, samples


def _cache_counts(run_dir: Path) -> tuple[int, int]:
    res = json.loads((run_dir / "results.json").read_text())
    counts = [c for info in res["tasks"].values() for c in info["cache"].values()]
    return sum(c["hits"] for c in counts), sum(c["misses"] for c in counts)


SLOW_BATCHES = """
import time
from icl_eval.models import hf

def _slowed(method):
    def wrapper(self, requests, progress=None, on_result=None):
        def slow(n_requests, n_tokens):
            time.sleep(0.05)
            if progress:
                progress(n_requests, n_tokens)
        return method(self, requests, slow, on_result)
    return wrapper

hf.HFModel.loglikelihood = _slowed(hf.HFModel.loglikelihood)
hf.HFModel.generate = _slowed(hf.HFModel.generate)
open(__file__ + ".loaded", "w").close()
"""
TOTAL = 2 * 12 + 2 * 12  # two tasks of 12 examples (echo_gen has 12 docs; --limit 12 for arithmetic) at 0 and 2 shots


def test_kill_midway_then_rerun_recomputes_nothing_and_matches(tiny_checkpoint, task_dir, tmp_path, capsys):
    reference = _run(_argv(tiny_checkpoint, task_dir, tmp_path / "ref", "--no-cache"), capsys)

    out = tmp_path / "out"
    db = default_path(out)
    # The run must still be going when we look: every batch is held 50 ms (through the public progress callback,
    # so results are untouched), however fast the machine. sitecustomize runs in the child before `-m icl_eval`.
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(SLOW_BATCHES)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(slow), str(REPO), os.environ.get("PYTHONPATH", "")]), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "icl_eval", *_argv(tiny_checkpoint, task_dir, out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    try:
        while _count_rows(db) < TOTAL // 3:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the run stored nothing within 60 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    stored = _count_rows(db)
    assert (slow / "sitecustomize.py.loaded").exists(), "the child did not pick up the slow-down"
    assert 0 < stored < TOTAL, f"killed too late to test anything: {stored} of {TOTAL}"
    killed_runs = [d for d in out.iterdir() if d.name != ".cache"]
    assert len(killed_runs) == 1 and not (killed_runs[0] / "results.json").exists(), "a killed run must leave no results.json"
    for f in (killed_runs[0] / "samples").iterdir():  # samples of finished task/shots are whole files
        assert all(json.loads(line) for line in f.read_text().splitlines())

    resumed = _run(_argv(tiny_checkpoint, task_dir, out), capsys)
    hits, misses = _cache_counts(resumed)
    assert (hits, misses) == (stored, TOTAL - stored), "every stored response is reused, only the rest is computed"
    assert _comparable(resumed) == _comparable(reference)

    again = _run(_argv(tiny_checkpoint, task_dir, out), capsys)
    assert _cache_counts(again) == (TOTAL, 0)
    assert _comparable(again) == _comparable(reference)


def test_changes_invalidate_exactly_the_affected_entries(tiny_checkpoint, task_dir, tmp_path, capsys):
    from icl_eval.models.tiny import save_tiny_checkpoint

    out = tmp_path / "out"

    def per_task(run_dir: Path) -> dict[str, tuple[int, int]]:
        res = json.loads((run_dir / "results.json").read_text())
        return {t: (sum(c["hits"] for c in info["cache"].values()), sum(c["misses"] for c in info["cache"].values())) for t, info in res["tasks"].items()}

    first = per_task(_run(_small_argv(tiny_checkpoint, task_dir, out), capsys))
    assert all(h == 0 for h, _ in first.values())
    n = {t: m for t, (_, m) in first.items()}

    # A generation setting of one task: only that task recomputes.
    (task_dir / "echo_gen.yaml").write_text(GEN_TASK.format(max_new_tokens=4))
    assert per_task(_run(_small_argv(tiny_checkpoint, task_dir, out), capsys)) == {"arithmetic_2da": (n["arithmetic_2da"], 0), "echo_gen": (0, n["echo_gen"])}

    # Its prompt template: again only that task.
    (task_dir / "echo_gen.jinja").write_text(GEN_TEMPLATE.replace("Repeat", "Say"))
    assert per_task(_run(_small_argv(tiny_checkpoint, task_dir, out), capsys))["echo_gen"] == (0, n["echo_gen"])
    assert per_task(_run(_small_argv(tiny_checkpoint, task_dir, out), capsys))["echo_gen"] == (n["echo_gen"], 0)

    # Another model (same architecture and tokenizer, other weights), or another BOS policy: everything recomputes.
    other = save_tiny_checkpoint(tmp_path / "other", seed=1, n_positions=512)
    assert all(h == 0 for h, _ in per_task(_run(_small_argv(other, task_dir, out), capsys)).values())
    assert all(h == 0 for h, _ in per_task(_run(_small_argv(tiny_checkpoint, task_dir, out, "--bos", "always"), capsys)).values())
    assert all(m == 0 for _, m in per_task(_run(_small_argv(tiny_checkpoint, task_dir, out), capsys)).values())


def test_no_cache_and_custom_cache_path(tiny_checkpoint, task_dir, tmp_path, capsys):
    out = tmp_path / "out"
    run = _run(_small_argv(tiny_checkpoint, task_dir, out, "--no-cache"), capsys)
    res = json.loads((run / "results.json").read_text())
    assert res["settings"]["cache"] is None and not default_path(out).exists()
    assert all("cache" not in info for info in res["tasks"].values())

    custom = tmp_path / "elsewhere" / "my.sqlite"
    _run(_small_argv(tiny_checkpoint, task_dir, out, "--cache", str(custom)), capsys)
    assert _count_rows(custom) == 4 + 4 and not default_path(out).exists()
    # Values are plain JSON objects, never pickles.
    with sqlite3.connect(custom) as con:
        rows = con.execute("SELECT kind, value FROM responses").fetchall()
    assert {k for k, _ in rows} == {"loglikelihood", "generate"}
    assert all(isinstance(json.loads(v), dict) for _, v in rows)


class _CountingModel:
    """A backend stand-in with batches of two; it can fail after a given number of batches."""

    max_length = 100

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls: list[str] = []
        self.fail_after = fail_after

    def loglikelihood(self, requests, progress=None, on_result=None):
        out = []
        for start in range(0, len(requests), 2):
            if self.fail_after is not None and start // 2 == self.fail_after:
                for i in range(start, min(start + 1, len(requests))):  # half a batch reported, then a crash
                    on_result(i, LoglikelihoodResult(-1.0, 1, 1, False))
                raise RuntimeError("boom")
            for i in range(start, min(start + 2, len(requests))):
                r = requests[i]
                self.calls.append(r.context)
                res = LoglikelihoodResult(-float(len(r.context)), 1, len(r.continuation), True, finite=r.context != "nan")
                out.append(res)
                if on_result:
                    on_result(i, res)
            if progress:
                progress(min(2, len(requests) - start), 1)
        return out

    def generate(self, requests, progress=None, on_result=None):
        out = [GenerationResult(r.context + "!\n", r.context + "!", 2) for r in requests]
        for i, res in enumerate(out):
            self.calls.append(requests[i].context)
            on_result(i, res)
        progress(len(out), 1)
        return out

    def loglikelihood_rolling(self, requests, progress=None, on_result=None):
        out = [RollingResult(-float(len(r.text)) * (r.stride or 1), len(r.text), 1, len(r.text)) for r in requests]
        for i, res in enumerate(out):
            self.calls.append(requests[i].text)
            on_result(i, res)
        progress(len(out), 1)
        return out

    def settings(self):
        return {"batch_size": 4, "bos_policy": "tokenizer", "bos": "tokenizer (adds no BOS)"}


def test_wrapper_sends_only_misses_and_keeps_order(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    inner = _CountingModel()
    model = CachedModel(inner, cache, "fp", "tokenizer", "0.0")
    assert model.max_length == 100  # the backend's attributes show through
    reqs = [LoglikelihoodRequest(c, " x", "t1") for c in ("a", "bb", "ccc")]
    first = model.loglikelihood(reqs)
    more = [LoglikelihoodRequest(c, " x", "t1") for c in ("dddd", "bb", "a", "nan")]
    seen: dict[int, LoglikelihoodResult] = {}
    second = model.loglikelihood(more, on_result=lambda i, r: seen.__setitem__(i, r))
    assert inner.calls == ["a", "bb", "ccc", "dddd", "nan"]
    assert [r.cached for r in first] == [False] * 3 and [r.cached for r in second] == [False, True, True, False]
    assert second[1] == replace(first[1], cached=True) and second[2] == replace(first[0], cached=True) and second[0].loglikelihood == -4.0
    assert seen == dict(enumerate(second))
    assert second[3].finite is False and model.loglikelihood(more)[3].finite is False  # flags survive the round trip
    model.loglikelihood([replace(r, task="t2") for r in reqs])  # another task config: nothing is shared
    assert inner.calls[-3:] == ["a", "bb", "ccc"]
    gen = [GenerationRequest("q", ("\n",), 5), GenerationRequest("q", ("\n",), 6)]
    model.generate(gen)
    model.generate(gen)
    assert inner.calls[-2:] == ["q", "q"]  # max_new_tokens is part of the key; the second call hit both


def test_rolling_results_are_cached_per_document_stride_and_task(tmp_path):
    path = tmp_path / "c.sqlite"
    inner = _CountingModel()
    model = CachedModel(inner, ResponseCache(path), "fp", "tokenizer", "0.0")
    docs = [RollingRequest("one doc", None, "ptb"), RollingRequest("another", 4, "ptb")]
    first = model.loglikelihood_rolling(docs)
    seen: dict[int, RollingResult] = {}
    again = model.loglikelihood_rolling(docs, on_result=seen.__setitem__)
    assert inner.calls == ["one doc", "another"] and not any(r.cached for r in first)
    assert again == [replace(r, cached=True) for r in first] and seen == dict(enumerate(again))
    stored = [json.loads(v) for (v,) in sqlite3.connect(path).execute("SELECT value FROM responses WHERE kind = 'loglikelihood_rolling'")]
    assert len(stored) == 2 and all("cached" not in row for row in stored)  # where a result came from is never stored
    other = model.loglikelihood_rolling([replace(docs[0], stride=2), replace(docs[0], task="wikitext")])
    assert inner.calls[2:] == ["one doc", "one doc"] and not any(r.cached for r in other)  # stride and task are in the key
    assert model.settings() == {**inner.settings(), "cache": str(path)}


def test_a_crash_keeps_finished_batches_and_drops_the_half_batch(tmp_path):
    path = tmp_path / "c.sqlite"
    reqs = [LoglikelihoodRequest(c, " x") for c in ("a", "bb", "ccc", "dddd", "eeeee")]
    model = CachedModel(_CountingModel(fail_after=1), ResponseCache(path), "fp", "tokenizer", "0.0")
    with pytest.raises(RuntimeError):
        model.loglikelihood(reqs)
    assert _count_rows(path) == 2  # the first batch only
    inner = _CountingModel()
    model = CachedModel(inner, ResponseCache(path), "fp", "tokenizer", "0.0")
    out = model.loglikelihood(reqs)
    assert inner.calls == ["ccc", "dddd", "eeeee"] and [r.cached for r in out] == [True, True, False, False, False]


def test_unreadable_row_is_recomputed_not_trusted(tmp_path):
    path = tmp_path / "c.sqlite"
    model = CachedModel(_CountingModel(), ResponseCache(path), "fp", "tokenizer", "0.0")
    model.loglikelihood([LoglikelihoodRequest("a", " x")])
    with sqlite3.connect(path) as con:
        con.execute("UPDATE responses SET value = ?", (json.dumps({"unexpected": 1}),))
    inner = _CountingModel()
    model = CachedModel(inner, ResponseCache(path), "fp", "tokenizer", "0.0")
    assert model.loglikelihood([LoglikelihoodRequest("a", " x")])[0].loglikelihood == -1.0 and inner.calls == ["a"]


# --- what the cache keys on: the model and tokenizer fingerprint ------------------------------------------------


def test_fingerprint_follows_weights_tokenizer_and_dtype_not_location(tiny_checkpoint, tmp_path):
    import shutil

    from icl_eval.models.hf import HFModel

    def fp(path: Path, **kw) -> str:
        return HFModel.load(str(path), device="cpu", **kw).fingerprint()

    base = fp(tiny_checkpoint)
    moved = tmp_path / "moved"
    shutil.copytree(tiny_checkpoint, moved)
    assert fp(moved) == base, "moving a checkpoint keeps its cache entries"
    assert fp(moved, dtype="bfloat16") != base
    assert fp(moved, bos_policy="always") != base

    weights = moved / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-3] ^= 0xFF  # one byte of one tensor
    weights.write_bytes(bytes(raw))
    assert fp(moved) != base

    retok = tmp_path / "retok"
    shutil.copytree(tiny_checkpoint, retok)
    tok = json.loads((retok / "tokenizer.json").read_text())
    tok["normalizer"] = {"type": "Lowercase"}
    (retok / "tokenizer.json").write_text(json.dumps(tok))
    assert fp(retok) != base


def _safetensors_with_many_tensors(path: Path) -> dict[str, tuple[int, int]]:
    """One big tensor and 32 small ones, like a checkpoint's matrices and norms; returns each tensor's byte span."""
    import struct

    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    tensors = {"a_big": torch.randn(256, 1024), **{f"b_{i:02d}": torch.randn(4, 4) for i in range(32)}}
    save_file(tensors, str(path))
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    return {k: (8 + n + v["data_offsets"][0], 8 + n + v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"}


def _scale_in_place(path: Path, span: tuple[int, int], factor: float) -> None:
    import torch

    with open(path, "r+b") as f:
        f.seek(span[0])
        values = torch.frombuffer(bytearray(f.read(span[1] - span[0])), dtype=torch.float32) * factor
        f.seek(span[0])
        f.write(values.numpy().tobytes())


def test_any_one_changed_tensor_of_a_big_weight_file_changes_the_fingerprint(tmp_path, monkeypatch):
    from icl_eval.models import fingerprint

    # Big files used to be sampled (64 blocks); lowering the old knobs makes this 1 MiB file "big" for that code,
    # and lowering REMEMBER_ABOVE sends it through the remembered-digest path of today's code.
    monkeypatch.setattr(fingerprint, "WHOLE_FILE_LIMIT", 1 << 10, raising=False)
    monkeypatch.setattr(fingerprint, "BLOCK", 64, raising=False)
    monkeypatch.setattr(fingerprint, "REMEMBER_ABOVE", 1 << 10, raising=False)
    monkeypatch.setattr(fingerprint, "SETTLE_NS", 0, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    path = tmp_path / "model.safetensors"
    spans = _safetensors_with_many_tensors(path)
    base = fingerprint.weight_file_digest(path)
    seen = {base}
    for name, span in spans.items():
        time.sleep(0.01)  # file times tick coarsely: a new write must not share the last one's timestamp
        _scale_in_place(path, span, 1.5)
        changed = fingerprint.weight_file_digest(path)
        assert changed not in seen, f"scaling tensor {name} in place left the fingerprint unchanged"
        seen.add(changed)
        time.sleep(0.01)
        _scale_in_place(path, span, 1 / 1.5)
    assert len(seen) == len(spans) + 1


def test_big_file_digests_are_remembered_until_the_file_changes(tmp_path, monkeypatch):
    from icl_eval.models import fingerprint

    monkeypatch.setattr(fingerprint, "REMEMBER_ABOVE", 1 << 10)
    monkeypatch.setattr(fingerprint, "SETTLE_NS", 0)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    path = tmp_path / "model.safetensors"
    spans = _safetensors_with_many_tensors(path)
    time.sleep(0.01)
    base = fingerprint.weight_file_digest(path)
    assert fingerprint.store_path().is_file()
    real = fingerprint.content_digest
    hashed: list[Path] = []
    monkeypatch.setattr(fingerprint, "content_digest", lambda p: hashed.append(p) or real(p))
    assert fingerprint.weight_file_digest(path) == base and hashed == [], "an unchanged file is not read again"

    # An in-place edit whose mtime is put back (rsync -t, touch -r) still moves the ctime: hashed again.
    st = path.stat()
    time.sleep(0.01)
    _scale_in_place(path, spans["b_07"], 2.0)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fingerprint.weight_file_digest(path) != base and hashed == [path]

    # A user cache folder that cannot be written costs a rehash per run, nothing else.
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    assert fingerprint.weight_file_digest(path) == fingerprint.weight_file_digest(path) != base


def test_a_model_built_in_memory_is_fingerprinted_by_every_value(gpt2_tokenizer):
    import torch

    from icl_eval.models.fingerprint import parameters_digest
    from icl_eval.models.tiny import tiny_gpt2

    model = tiny_gpt2(len(gpt2_tokenizer), n_positions=64)
    base = parameters_digest(model)
    with torch.no_grad():
        model.transformer.h[1].attn.c_attn.weight[3, 5] += 1e-3  # one value the old strided sample skipped
    assert parameters_digest(model) != base


def test_a_failing_later_task_loses_nothing_done_before_it(tiny_checkpoint, task_dir, tmp_path, capsys):
    out = tmp_path / "out"
    (task_dir / "long_ll.yaml").write_text("name: long_ll\noutput_type: loglikelihood\ntemplate: echo_gen.jinja\nmetrics: [acc]\ndata:\n  local: words.jsonl\n")
    (task_dir / "words.jsonl").write_text((json.dumps({"word": "word " * 600}) + "\n") * 2)  # targets longer than the model's context
    argv = ["run", "--model", str(tiny_checkpoint), "--tasks", f"arithmetic_2da,{task_dir / 'long_ll.yaml'}", "--shots", "0,1", "--limit", "4", "--data-dir", str(task_dir), "--output", str(out)]
    assert main(argv) == 2
    assert "longer than the model's context" in capsys.readouterr().err
    (run_dir,) = [d for d in out.iterdir() if d.name != ".cache"]
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == ["arithmetic_2da_0shot.jsonl", "arithmetic_2da_1shot.jsonl"]
    assert _count_rows(default_path(out)) == 8

    (task_dir / "words.jsonl").write_text("".join(json.dumps({"word": w}) + "\n" for w in WORDS))  # fixed: the rerun reuses the first task
    res = json.loads((_run(argv, capsys) / "results.json").read_text())
    assert res["tasks"]["arithmetic_2da"]["cache"] == {"0": {"hits": 4, "misses": 0}, "1": {"hits": 4, "misses": 0}}
    assert res["tasks"]["long_ll"]["cache"] == {"0": {"hits": 0, "misses": 4}, "1": {"hits": 0, "misses": 4}}


def test_code_version_follows_the_backend_source(tmp_path, monkeypatch):
    import importlib

    from icl_eval.cache import code_version

    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "my_backend.py").write_text("class Backend:\n    pass\n")
    before = code_version(importlib.import_module("my_backend").Backend())
    (tmp_path / "my_backend.py").write_text("class Backend:\n    pass  # scoring changed\n")
    after = code_version(importlib.import_module("my_backend").Backend())
    assert before != after and before.split("+")[0] == after.split("+")[0]

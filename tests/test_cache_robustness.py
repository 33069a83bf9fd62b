"""The response cache under damage: zeroed pages, rows of the wrong shape, a read-only file, and what its code
version covers. None of these may end in a traceback or serve a response the current code would not compute."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from icl_eval.cache import CachedModel, ResponseCache, code_version
from icl_eval.errors import IclEvalError
from icl_eval.requests import GenerationRequest, GenerationResult, LoglikelihoodRequest, LoglikelihoodResult


class _Model:
    """A backend stand-in: log-likelihood minus the context length, generation echoes; records what it computed."""

    max_length = 100

    def __init__(self) -> None:
        self.calls: list[str] = []

    def loglikelihood(self, requests, progress=None, on_result=None):
        out = []
        for i, r in enumerate(requests):
            self.calls.append(r.context)
            out.append(LoglikelihoodResult(-float(len(r.context)), 1, len(r.continuation), True))
            if on_result:
                on_result(i, out[-1])
        if progress:
            progress(len(requests), 1)
        return out

    def generate(self, requests, progress=None, on_result=None):
        out = []
        for i, r in enumerate(requests):
            self.calls.append(r.context)
            out.append(GenerationResult(r.context + "!", r.context + "!", 1))
            if on_result:
                on_result(i, out[-1])
        if progress:
            progress(len(requests), 1)
        return out


def _cached(path: Path, inner: _Model | None = None) -> tuple[CachedModel, _Model]:
    inner = inner or _Model()
    model = CachedModel(inner, ResponseCache(path), "fp", "tokenizer", "0.0")
    return model, inner


def _rows(path: Path) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
        return con.execute("SELECT COUNT(*) FROM responses").fetchone()[0]


REQS = [LoglikelihoodRequest("x" * n, " y") for n in range(1, 400)]


# --- a damaged file ----------------------------------------------------------------------------------------------


def test_zeroed_interior_pages_are_one_line_at_open(tmp_path):
    path = tmp_path / "c.sqlite"
    model, _ = _cached(path)
    model.loglikelihood(REQS)
    model.cache.close()
    assert path.stat().st_size > 8 * 4096
    with open(path, "r+b") as f:  # pages 3..6: b-tree pages of the table and its key index
        f.seek(3 * 4096)
        f.write(b"\0" * 4 * 4096)
    with pytest.raises(IclEvalError) as e:
        ResponseCache(path)
    message = str(e.value)
    assert message.startswith(f"--cache {path}: the SQLite file is damaged") and "delete it" in message and "--no-cache" in message
    assert "\n" not in message


def test_damage_found_later_is_one_line_too(tmp_path):
    path = tmp_path / "c.sqlite"
    cache = ResponseCache(path)

    class Broken:
        def execute(self, *a):
            raise sqlite3.DatabaseError("database disk image is malformed")

    cache.db = Broken()
    with pytest.raises(IclEvalError, match="damaged.*malformed"):
        cache.get_many(["k"])
    with pytest.raises(IclEvalError, match="damaged"):
        len(cache)


# --- rows with the right key and the wrong value -----------------------------------------------------------------

GOOD_LL = {"loglikelihood": -1.0, "n_tokens": 1, "n_chars": 2, "is_greedy": True, "left_truncated": False, "finite": True}
BAD_LL = [
    {**GOOD_LL, "loglikelihood": "-1.0"},
    {**GOOD_LL, "loglikelihood": None},
    {**GOOD_LL, "loglikelihood": True},
    {**GOOD_LL, "n_tokens": 1.5},
    {**GOOD_LL, "n_tokens": "1"},
    {**GOOD_LL, "n_chars": False},
    {**GOOD_LL, "is_greedy": 1},
    {**GOOD_LL, "is_greedy": "yes"},
    {**GOOD_LL, "finite": None},
    {**GOOD_LL, "left_truncated": [1]},
    {k: v for k, v in GOOD_LL.items() if k != "n_tokens"},
    {**GOOD_LL, "extra": 1},
    {**GOOD_LL, "cached": True},  # never stored: a row holding it was not written by this cache
    [-1.0, 1, 2, True],
    "-1.0",
    5,
]


@pytest.mark.parametrize("stored", BAD_LL, ids=[str(i) for i in range(len(BAD_LL))])
def test_a_row_of_the_wrong_types_is_a_miss(stored, tmp_path):
    path = tmp_path / "c.sqlite"
    model, _ = _cached(path)
    model.loglikelihood([LoglikelihoodRequest("a", " x")])
    with sqlite3.connect(path) as con:
        con.execute("UPDATE responses SET value = ?", (json.dumps(stored),))
    model, inner = _cached(path)
    (result,) = model.loglikelihood([LoglikelihoodRequest("a", " x")])
    assert inner.calls == ["a"] and not result.cached
    assert result == LoglikelihoodResult(-1.0, 1, 2, True)
    assert json.loads(sqlite3.connect(path).execute("SELECT value FROM responses").fetchone()[0]) == GOOD_LL  # overwritten


def test_a_non_text_value_and_a_wrongly_typed_generation_are_misses(tmp_path):
    path = tmp_path / "c.sqlite"
    model, _ = _cached(path)
    gen = [GenerationRequest("q", ("\n",), 3)]
    model.generate(gen)
    for bad in (json.dumps({"raw": 5, "text": "q!", "n_tokens": 1, "left_truncated": False}), b"\x00\xff", 12):
        with sqlite3.connect(path) as con:
            con.execute("UPDATE responses SET value = ?", (bad,))
        model, inner = _cached(path)
        assert model.generate(gen)[0].text == "q!" and inner.calls == ["q"]


def test_ints_stored_for_floats_are_read_as_floats(tmp_path):
    path = tmp_path / "c.sqlite"
    model, _ = _cached(path)
    model.loglikelihood([LoglikelihoodRequest("a", " x")])
    with sqlite3.connect(path) as con:
        con.execute("UPDATE responses SET value = ?", (json.dumps({**GOOD_LL, "loglikelihood": -3}),))
    model, inner = _cached(path)
    (result,) = model.loglikelihood([LoglikelihoodRequest("a", " x")])
    assert inner.calls == [] and result.cached and result.loglikelihood == -3.0 and isinstance(result.loglikelihood, float)


# --- a cache that cannot be written ------------------------------------------------------------------------------


def _read_only(monkeypatch, path: Path) -> None:
    """chmod a-w; root writes anyway, so then os.access answers as it would for a user (SQLite itself is then
    opened read-only and refuses writes for real)."""
    os.chmod(path, 0o444)
    if os.geteuid() == 0:
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, m, *a, **k: False if Path(p) == path and m & os.W_OK else real(p, m, *a, **k))


def test_a_read_only_cache_reuses_its_rows_and_computes_the_rest_without_storing(tmp_path, monkeypatch, capsys):
    path = tmp_path / "c.sqlite"
    model, _ = _cached(path)
    model.loglikelihood(REQS[:3])
    model.cache.close()
    before = path.read_bytes()
    _read_only(monkeypatch, path)
    try:
        model, inner = _cached(path)
        assert model.cache.read_only
        got = model.loglikelihood(REQS[:6])
        assert inner.calls == [r.context for r in REQS[3:6]] and [r.cached for r in got] == [True] * 3 + [False] * 3
        assert [r.loglikelihood for r in got] == [-float(len(r.context)) for r in REQS[:6]]
        model.generate([GenerationRequest("q", ("\n",), 3)])  # more misses: still one note
        model.cache.close()
    finally:
        os.chmod(path, 0o644)
    err = capsys.readouterr().err
    assert err.count("read-only") == 1 and "not stored" in err and str(path) in err and "Traceback" not in err
    assert path.read_bytes() == before and _rows(path) == 3


def test_a_cache_that_turns_read_only_while_open_stops_storing(tmp_path, capsys):
    path = tmp_path / "c.sqlite"
    model, _ = _cached(path)
    model.loglikelihood(REQS[:2])
    model.cache.db.close()
    model.cache.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)  # as on a file system remounted read-only
    got = model.loglikelihood(REQS[:4])
    assert [r.loglikelihood for r in got] == [-float(len(r.context)) for r in REQS[:4]]
    assert model.cache.read_only and "read-only" in capsys.readouterr().err
    model.cache.close()
    assert _rows(path) == 2


def test_a_read_only_cache_through_the_cli(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    from icl_eval.cli import main

    cache = tmp_path / "c.sqlite"

    def argv(limit: int) -> list[str]:
        return ["run", "--model", str(tiny_checkpoint), "--tasks", "arithmetic_2da", "--limit", str(limit), "--output", str(tmp_path / "out"), "--cache", str(cache)]

    assert main(argv(2)) == 0
    capsys.readouterr()
    _read_only(monkeypatch, cache)
    try:
        assert main(argv(3)) == 0
    finally:
        os.chmod(cache, 0o644)
    captured = capsys.readouterr()
    assert "cache: 2 responses reused, 1 computed" in captured.out
    assert captured.err.count("is read-only") == 1 and "Traceback" not in captured.err
    assert _rows(cache) == 2


# --- what the code version covers --------------------------------------------------------------------------------

RESPONSE_CODE = [
    "models/hf.py", "models/hf_scoring.py", "models/hf_generation.py", "models/fingerprint.py", "models/tiny.py", "models/__init__.py",
    "batching.py", "rolling.py", "requests.py", "cache.py",
]


@pytest.mark.parametrize("relative", RESPONSE_CODE)
def test_the_code_version_follows_every_file_that_can_change_a_response(relative, monkeypatch):
    from icl_eval.models.hf import HFModel

    target = (Path(__file__).resolve().parent.parent / "icl_eval" / relative).resolve()
    backend = HFModel.__new__(HFModel)  # only its class is looked at
    before = code_version(backend)
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: real(self) + (b"# edited\n" if self.resolve() == target else b""))
    assert code_version(backend) != before, f"{relative} changed but the cache would reuse old responses"


def test_the_code_version_follows_library_versions(monkeypatch):
    from importlib import metadata

    from icl_eval.models.hf import HFModel

    backend = HFModel.__new__(HFModel)
    before = code_version(backend)
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "999.0" if name == "transformers" else real(name))
    assert code_version(backend) != before

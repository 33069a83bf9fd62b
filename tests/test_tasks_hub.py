"""The hub mappings (hub_fields): rows in each hub dataset's documented layout give the same prompts as the local
files. The hub itself is never reached: `datasets.load_dataset` is replaced by a stub serving those rows."""

from __future__ import annotations

import pytest

from icl_eval.cli import _Unbounded
from icl_eval.evaluator import Settings, build_prompt, prepare
from icl_eval.registry import load_task

HUB_ROWS = {
    ("wmt14", "fr-en"): [{"translation": {"en": "The house is red.", "fr": "La maison est rouge."}}, {"translation": {"en": "I like cheese.", "fr": "J'aime le fromage."}}],
    ("mandarjoshi/trivia_qa", "unfiltered.nocontext"): [{"question": "Who wrote Hamlet?", "answer": {"value": "William Shakespeare", "aliases": ["Shakespeare"]}}] * 2,
    ("google-research-datasets/nq_open", None): [{"question": "when did ww2 end", "answer": ["1945"]}] * 2,
    ("stanfordnlp/web_questions", None): [{"url": "u", "question": "where is paris located?", "answers": ["France"]}] * 2,
    ("Rowan/hellaswag", None): [{"activity_label": "Baking", "ctx": "A man mixes flour. he", "endings": ["bakes bread.", "swims.", "sings.", "runs."], "label": "0"}] * 2,
    ("ybisk/piqa", None): [{"goal": "To open a jar,", "sol1": "hit it.", "sol2": "twist the lid.", "label": 1}] * 2,
    ("allenai/ai2_arc", "ARC-Easy"): [{"id": "x", "question": "What melts ice?", "choices": {"text": ["cold", "heat"], "label": ["A", "B"]}, "answerKey": "B"}] * 2,
    ("allenai/winogrande", "winogrande_xl"): [{"sentence": "The cup fit in the box because _ was small.", "option1": "the cup", "option2": "the box", "answer": "1"}] * 2,
}
EXPECTED = {  # task: (context, gold continuation) at zero shots
    "wmt14_en_fr": ("Q: What is the French translation of The house is red. A:", " La maison est rouge."),
    "triviaqa": ("Q: Who wrote Hamlet?\nA:", " William Shakespeare"),
    "nq_open": ("Q: when did ww2 end?\nA:", " 1945"),
    "webqs": ("Q: where is paris located?\nA:", " France"),
    "hellaswag": ("Baking: A man mixes flour. he", " bakes bread."),
    "piqa": ("To open a jar,", " twist the lid."),
    "arc_easy": ("Question: What melts ice? Answer:", " heat"),
    "winogrande": ("The cup fit in the box because the cup", " was small."),
}


@pytest.fixture()
def stub_hub(monkeypatch):
    import datasets

    def load_dataset(path, name=None, split=None, **kw):
        return HUB_ROWS[(path, name)]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr("icl_eval.data.hub_reachable", lambda: True)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)


@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_hub_rows_map_to_the_local_layout(task, stub_hub, tmp_path):
    prep = prepare(load_task(task), Settings(data_dir=str(tmp_path)))  # an empty data dir: no local file
    assert prep.source.startswith("hub:")
    p = build_prompt(prep, 0, 0, 1234, _Unbounded())
    assert (p.context, p.target) == EXPECTED[task]
    if task == "triviaqa":
        assert prep.example(0).references == ("William Shakespeare", "Shakespeare")

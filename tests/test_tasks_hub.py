"""The hub mappings (hub_fields): rows in each hub dataset's documented layout give the same prompts as the local
files. The hub itself is never reached: `datasets.load_dataset` is replaced by a stub serving those rows."""

from __future__ import annotations

import pytest

from icl_eval.evaluator import NoContextLimit
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
    p = build_prompt(prep, 0, 0, 1234, NoContextLimit())
    assert (p.context, p.target) == EXPECTED[task]
    if task == "triviaqa":
        assert prep.example(0).references == ("William Shakespeare", "Shakespeare")


# --- suite: the tasks added from Appendix G, each hub layout mapped to the local one -----------------------------
_PASSAGE = {"article": "Tom has a dog.", "question": "What does Tom have?", "options": ["a cat", "a dog", "a fish", "a bird"], "answer": "B"}
SUITE_HUB_ROWS = {
    ("ErnestSDavis/winograd_wsc", "wsc273"): [{"text": "The trophy doesn't fit into the suitcase because it is too large.", "pronoun": "it",
                                               "pronoun_loc": 49, "options": ["the trophy", "the suitcase"], "label": 0}] * 2,
    ("allenai/openbookqa", "main"): [{"question_stem": "Plants need", "choices": {"text": ["sun", "salt"], "label": ["A", "B"]}, "answerKey": "A"}] * 2,
    ("ehovy/race", "high"): [_PASSAGE] * 2,
    ("aps/super_glue", "boolq"): [{"question": "is the sky blue", "passage": "Sky -- The sky is blue.", "label": 1}] * 2,
    ("aps/super_glue", "cb"): [{"premise": "It rained.", "hypothesis": "it was dry", "label": 1}] * 2,
    ("aps/super_glue", "copa"): [{"premise": "The man fell.", "choice1": "He tripped.", "choice2": "He flew.", "question": "cause", "label": 0}] * 2,
    ("aps/super_glue", "rte"): [{"premise": "Ann is a doctor.", "hypothesis": "Ann works.", "label": 0}] * 2,
    ("aps/super_glue", "wic"): [{"word": "bank", "sentence1": "A river bank.", "sentence2": "A savings bank.", "label": 0}] * 2,
    ("facebook/anli", None): [{"premise": "Bo is tall.", "hypothesis": "Bo is short.", "label": 2}] * 2,
}
SUITE_EXPECTED = {  # task: (context, gold continuation) at zero shots; partial scoring: the gold option's context
    "wsc273": ("The trophy doesn't fit into the suitcase because the trophy", " is too large."),
    "openbookqa": ("Plants need", " sun"),
    "race_h": ("Article:\nTom has a dog.\n\nQ: What does Tom have?\n\nA:", " a dog"),
    "boolq": ("Sky -- The sky is blue.\nquestion: is the sky blue?\nanswer:", " yes"),
    "cb": ("It rained.\nquestion: it was dry. true, false, or neither?\nanswer:", " false"),
    "copa": ("The man fell because", " he tripped."),
    "rte": ("Ann is a doctor.\nquestion: Ann works. True or False?\nanswer:", " True"),
    "wic": ("A river bank.\nA savings bank.\nquestion: Is the word 'bank' used in the same way in the two sentences above?\nanswer:", " no"),
    "anli_r2": ("anli 2: anli 2: Bo is tall.\nQuestion: Bo is short. True, False, or Neither?", " False"),
}


@pytest.mark.parametrize("task", sorted(SUITE_EXPECTED))
def test_suite_hub_rows_map_to_the_local_layout(task, stub_hub, monkeypatch, tmp_path):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda path, name=None, split=None, **kw: SUITE_HUB_ROWS[(path, name)])
    prep = prepare(load_task(task), Settings(data_dir=str(tmp_path)))
    assert prep.source.startswith("hub:")
    p = build_prompt(prep, 0, 0, 1234, NoContextLimit())
    assert (p.context, p.target) == SUITE_EXPECTED[task]
    one = build_prompt(prep, 0, 1, 1234, NoContextLimit())  # the pool comes from the hub too, in the same layout
    assert one.context.endswith(p.context) and len(one.fewshot_ids) == 1

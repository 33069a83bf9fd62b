"""Golden prompts for the GPT-3 tasks added from Appendix G (WSC273, OpenBookQA, RACE, StoryCloze, SuperGLUE, ANLI),
on the real files in shared/data (skipped when it is absent).

Three checks: (1) the paper's own figure examples that are in the data render exactly as the figure shows them;
(2) `icl-eval prompt TASK --shots K` at 0, 1 and 3 shots equals, character for character, the paper's format
written out here directly over the raw records (read with json/csv/tarfile, not with icl_eval's readers), with
the demonstrations the command reports; (3) every new task runs end to end on a tiny random model at 0 and 1 shots.
"""

from __future__ import annotations

import ast
import csv
import json
import re
import tarfile
from functools import lru_cache
from pathlib import Path

import pytest

from icl_eval.cli import main
from icl_eval.evaluator import NoContextLimit
from icl_eval.evaluator import Settings, build_prompt, prepare
from icl_eval.registry import load_task

NEW_TASKS = ["wsc273", "openbookqa", "race_h", "race_m", "storycloze", "boolq", "cb", "copa", "rte", "wic",
             "anli_r1", "anli_r2", "anli_r3"]


# --- raw records, read independently of icl_eval ---------------------------------------------------------------

def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _csv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _obqa(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))[1:]
    out = []
    for r in rows:
        parts = re.split(r" ?\(([A-D])\) ", " " + r[2])[1:]  # ['A', text, 'B', text, ...]
        out.append({"question": r[1], "choices": [t.strip() for t in parts[1::2]], "gold": "ABCD".index(r[4])})
    return out


def _race(path: Path, level: str) -> list[dict]:
    out = []
    with tarfile.open(path) as tar:
        files = sorted((m.name, tar.extractfile(m).read()) for m in tar if m.isfile() and f"/{level}/" in m.name)
        for _, raw in files:
            p = json.loads(raw)
            for q, opts, a in zip(p["questions"], p["options"], p["answers"]):
                out.append({"article": p["article"], "question": q, "options": opts, "gold": "ABCD".index(a)})
    return out


def _q(question: str) -> str:
    return question if question.endswith("?") else question + "?"


def _lower_first(s: str) -> str:
    return s if s.startswith("I ") else s[:1].lower() + s[1:]


# Per task: (eval records, pool records or None for "the eval split minus the example", formatter). A formatter
# gives (context, candidate strings without the target delimiter, gold index); for WSC273 (partial scoring) the
# candidates are the per-option contexts and the context is the shared continuation.
def _sources(data: Path) -> dict:
    sg = data / "superglue"
    anli = {r: (_jsonl(data / f"anli/anli_v1.0/R{r}/test.jsonl"), _jsonl(data / f"anli/anli_v1.0/R{r}/dev.jsonl")) for r in (1, 2, 3)}

    def anli_fmt(r):
        return lambda d: (f"anli {r}: anli {r}: {d['context']}\nQuestion: {d['hypothesis']} True, False, or Neither?",
                          ["True", "False", "Neither"], "ecn".index(d["label"]))

    def race_fmt(d):
        return f"Article:\n{d['article']}\n\nQ: {d['question']}\n\nA:", d["options"], d["gold"]

    story = data / "storycloze"
    return {
        "wsc273": (_jsonl(data / "wsc273/winograd_wsc.llmfoundry.jsonl"), None,
                   lambda d: (d["continuation"], d["context_options"], d["gold"])),
        "openbookqa": (_obqa(data / "openbookqa/Main/test.tsv"), _obqa(data / "openbookqa/Main/train.tsv"),
                       lambda d: (d["question"], d["choices"], d["gold"])),
        "race_h": (_race(data / "race/RACE_test.tar.gz", "high"), _race(data / "race/RACE_train_prefix.tar.gz", "high"), race_fmt),
        "race_m": (_race(data / "race/RACE_test.tar.gz", "middle"), _race(data / "race/RACE_train_prefix.tar.gz", "middle"), race_fmt),
        "storycloze": (_csv(story / "cloze_test_test__spring2016 - cloze_test_ALL_test.csv"),
                       _csv(story / "cloze_test_val__spring2016 - cloze_test_ALL_val.csv"),
                       lambda d: (" ".join(d[f"InputSentence{i}"] for i in range(1, 5)),
                                  [d["RandomFifthSentenceQuiz1"], d["RandomFifthSentenceQuiz2"]], int(d["AnswerRightEnding"]) - 1)),
        "boolq": (_jsonl(sg / "BoolQ/val.jsonl"), _jsonl(sg / "FewGLUE/BoolQ/train.jsonl"),
                  lambda d: (f"{d['passage']}\nquestion: {_q(d['question'])}\nanswer:", ["yes", "no"], 0 if d["label"] else 1)),
        "cb": (_jsonl(sg / "CB/val.jsonl"), _jsonl(sg / "CB/train.jsonl"),
               lambda d: (f"{d['premise']}\nquestion: {d['hypothesis']}. true, false, or neither?\nanswer:",
                          ["true", "false", "neither"], ["entailment", "contradiction", "neutral"].index(d["label"]))),
        "copa": (_jsonl(sg / "COPA/val.jsonl"), _jsonl(sg / "FewGLUE/COPA/train.jsonl"),
                 lambda d: (d["premise"].removesuffix(".") + (" because" if d["question"] == "cause" else " therefore"),
                            [_lower_first(d["choice1"]), _lower_first(d["choice2"])], d["label"])),
        "rte": (_jsonl(sg / "RTE/val.jsonl"), _jsonl(sg / "RTE/train.jsonl"),
                lambda d: (f"{d['premise']}\nquestion: {d['hypothesis']} True or False?\nanswer:", ["True", "False"],
                           0 if d["label"] == "entailment" else 1)),
        "wic": (_jsonl(sg / "WiC/val.jsonl"), _jsonl(sg / "FewGLUE/WiC/train.jsonl"),
                lambda d: (f"{d['sentence1']}\n{d['sentence2']}\nquestion: Is the word '{d['word']}' used in the same way in the two sentences above?\nanswer:",
                           ["no", "yes"], 1 if d["label"] else 0)),
        **{f"anli_r{r}": (anli[r][0], anli[r][1], anli_fmt(r)) for r in (1, 2, 3)},
    }


@lru_cache(maxsize=1)
def _all_sources(data: str) -> dict:
    return _sources(Path(data))


def _expected(task: str, data: Path, doc_id: int, demo_ids: list[int]) -> tuple[list[str], list[str], int]:
    """(context per candidate, continuation per candidate, gold) in the paper's format."""
    docs, pool, fmt = _all_sources(str(data))[task]
    pool = docs if pool is None else pool
    shown = []
    for i in demo_ids:
        ctx, cands, gold = fmt(pool[i])
        shown.append(f"{cands[gold]} {ctx}" if task == "wsc273" else f"{ctx} {cands[gold]}")
    prefix = "".join(s + "\n\n" for s in shown)
    ctx, cands, gold = fmt(docs[doc_id])
    if task == "wsc273":
        return [prefix + c for c in cands], [" " + ctx] * len(cands), gold
    return [prefix + ctx] * len(cands), [" " + c for c in cands], gold


def _run_prompt(task: str, shots: int, index: int, data: Path, capsys) -> tuple[list[int], str, str, list[str]]:
    assert main(["prompt", task, "--shots", str(shots), "--index", str(index), "--data-dir", str(data)]) == 0
    out, err = capsys.readouterr()
    ids = ast.literal_eval(re.search(r"demonstrations (\[[0-9, ]*\])", err).group(1))
    lines = out.split("\n--- repr ---\n", 1)[1].splitlines()
    context, target = ast.literal_eval(lines[0]), ast.literal_eval(lines[1])
    return ids, context, target, [line for line in lines[3:] if line.strip()]


# --- (2) the prompt command against the paper's format over raw records ----------------------------------------

@pytest.mark.parametrize("shots", [0, 1, 3])
@pytest.mark.parametrize("task", NEW_TASKS)
def test_prompt_command_is_the_papers_format(task, shots, shared, capsys):
    data = shared / "data"
    index = 5  # not the first record: demonstrations are drawn around it, and doc ids must line up with the raw file
    ids, context, target, candidate_lines = _run_prompt(task, shots, index, data, capsys)
    assert len(ids) == shots
    contexts, continuations, gold = _expected(task, data, index, ids)
    assert (context, target) == (contexts[gold], continuations[gold])
    if load_task(task).scoring == "partial":
        want = [f"{'*' if i == gold else ' '} [{i}] {c[-80:]!r} -> {t!r}" for i, (c, t) in enumerate(zip(contexts, continuations))]
    else:
        want = [f"{'*' if i == gold else ' '} [{i}] {t!r}" for i, t in enumerate(continuations)]
    assert candidate_lines == want
    prep = prepare(load_task(task), Settings(data_dir=str(data)))
    p = build_prompt(prep, index, shots, 1234, NoContextLimit())
    assert [c for c, _ in p.pairs] == contexts and [t for _, t in p.pairs] == continuations


# --- (1) the figures of Appendix G whose examples are in the shared files ---------------------------------------

# task: (eval split or pool, a substring locating the record, the figure's context, the figure's correct answer).
# Newlines where the figure breaks a line that is not full; CB's premise keeps the data's double space.
FIGURES = {
    "cb": ("pool", "Manhattan comes cheap",  # Figure G.30 (a training example)
           "The trend toward lower rents may seem surprising given that some communities in New York are bemoaning the "
           "loss of favorite local businesses to high rents.  But, despite the recent softening, for many of these "
           "retailers there's still been too big a jump from the rental rates of the late 1970s, when their leases were "
           "signed. Certainly, the recent drop in prices doesn't mean Manhattan comes cheap.\n"
           "question: Manhattan comes cheap. true, false, or neither?\nanswer:", " false"),
    "rte": ("pool", "The bet, which won him dinner",  # Figure G.31 (a training example)
            "The bet, which won him dinner for four, was regarding the existence and mass of the top quark, an elementary "
            "particle discovered in 1995.\nquestion: The Top Quark is the last of six flavors of quarks predicted by the "
            "standard model theory of particle physics. True or False?\nanswer:", " False"),
    "openbookqa": ("pool", "Organisms require energy",  # Figure G.8; the figure prints the answer with a full stop
                   "Organisms require energy in order to do what?", " mature and develop"),
    "storycloze": ("docs", "Bob went to the gas station",  # Figure G.17
                   "Bob went to the gas station to fill up his car. His tank was completely empty and so was his wallet. "
                   "The cashier offered to pay for his gas if he came back later to pay. Bob felt grateful as he drove home.",
                   " Bob believed that there were good people in the world."),
}


@pytest.mark.parametrize("task", sorted(FIGURES))
def test_figure_example_renders_as_printed(task, shared):
    split, needle, context, answer = FIGURES[task]
    prep = prepare(load_task(task), Settings(data_dir=str(shared / "data")))
    records = prep.pool if split == "pool" else prep.docs
    hits = [i for i, d in enumerate(records) if needle in json.dumps(d, ensure_ascii=False)]
    assert len(hits) == 1
    ex = prep.example(hits[0], from_pool=split == "pool")
    assert (ex.input, " " + ex.target) == (context, answer)


def test_winograd_figure_is_partial_scoring(shared):
    """Figure G.13: the candidates replace the pronoun and close the context; the rest of the sentence is scored."""
    prep = prepare(load_task("wsc273"), Settings(data_dir=str(shared / "data")))
    i = next(i for i, d in enumerate(prep.docs) if d["continuation"] == "looks dowdy on her.")
    p = build_prompt(prep, i, 0, 1234, NoContextLimit())
    assert p.pairs == (("Grace was happy to trade me her sweater for my jacket. She thinks the sweater", " looks dowdy on her."),
                          ("Grace was happy to trade me her sweater for my jacket. She thinks the jacket", " looks dowdy on her."))
    assert prep.example(i).gold == 0


def test_literal_zero_shot_forms(shared):
    """One zero-shot context per format written out in full, so a format change shows as a readable diff."""
    data = str(shared / "data")

    def first(task: str, index: int = 0) -> tuple[str, tuple[str, ...]]:
        prep = prepare(load_task(task), Settings(data_dir=data))
        p = build_prompt(prep, index, 0, 1234, NoContextLimit())
        return p.pairs[0][0], tuple(t for _, t in p.pairs)

    assert first("copa") == ("The man turned on the faucet therefore", (" the toilet filled with water.", " water flowed from the spout."))
    assert first("cb") == ("Valence the void-brain, Valence the virtuous valet. Why couldn't the figger choose his own portion of "
                           "titanic anatomy to shaft? Did he think he was helping?\nquestion: Valence was helping. true, false, or "
                           "neither?\nanswer:", (" true", " false", " neither"))
    assert first("wic") == ("An emerging professional class.\nApologizing for losing your temper, even though you were badly "
                            "provoked, showed real class.\nquestion: Is the word 'class' used in the same way in the two sentences "
                            "above?\nanswer:", (" no", " yes"))
    ctx, cands = first("anli_r1")
    assert ctx == ("anli 1: anli 1: Ernest Jones is a British jeweller and watchmaker. Established in 1949, its first store was "
                   "opened in Oxford Street, London. Ernest Jones specialises in diamonds and watches, stocking brands such as Gucci "
                   "and Emporio Armani. Ernest Jones is part of the Signet Jewelers group.\nQuestion: The first Ernest Jones store "
                   "was opened on the continent of Europe. True, False, or Neither?") and cands == (" True", " False", " Neither")
    ctx, cands = first("boolq")
    assert ctx.startswith("Ethanol fuel -- All biomass goes through") and ctx.endswith(
        "\nquestion: does ethanol take more energy make that produces?\nanswer:") and cands == (" yes", " no")
    ctx, cands = first("race_h")
    assert ctx.startswith("Article:\nStudies show that you may be lied to every day") and ctx.endswith(
        "\n\nQ: From Para.1 we learn that lying is very   _  .\n\nA:") and cands == (" harmful", " easy", " interesting", " common")


def test_split_sizes_and_pools(shared):
    """The paper's splits (Table H.1) and the pools docs/tasks.md names."""
    sizes = {"wsc273": (273, None), "openbookqa": (500, 4957), "race_h": (3498, 3444), "race_m": (1436, 4099),
             "storycloze": (1871, 1871), "boolq": (3270, 32), "cb": (56, 250), "copa": (100, 32), "rte": (277, 2490),
             "wic": (638, 32), "anli_r1": (1000, 1000), "anli_r2": (1000, 1000), "anli_r3": (1200, 1200)}
    for task, (n, pool) in sizes.items():
        prep = prepare(load_task(task), Settings(data_dir=str(shared / "data")))
        assert len(prep.docs) == n, task
        assert prep.same_split == (pool is None), task
        if pool is not None:
            assert len(prep.pool) == pool, task


# --- (3) end to end on a tiny random model ----------------------------------------------------------------------

def test_new_tasks_end_to_end(tiny_checkpoint, shared, tmp_path, capsys):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model gains nothing from a second thread on a shared machine
    try:
        argv = ["run", "--model", str(tiny_checkpoint), "--tasks", ",".join(NEW_TASKS), "--shots", "0,1", "--limit", "4",
                "--data-dir", str(shared / "data"), "--output", str(tmp_path / "out")]
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    path = Path(capsys.readouterr().out.strip().splitlines()[-1])
    res = json.loads(path.read_text())
    got = {(r["task"], r["shots"], r["metric"]): r for r in res["records"]}
    for task in NEW_TASKS:
        for k in (0, 1):
            for m in load_task(task).metrics:
                assert got[(task, k, m)]["n"] == 4 and 0.0 <= got[(task, k, m)]["value"] <= 1.0, (task, k, m)
            samples = [json.loads(x) for x in (path.parent / "samples" / f"{task}_{k}shot.jsonl").read_text().splitlines()]
            # The tiny model's 512-token context cannot hold a RACE article twice: whole demonstrations drop, counted.
            dropped = res["tasks"][task]["truncation"][str(k)]["demos_dropped"] if k else 0
            assert len(samples) == 4 and sum(k - len(s["fewshot_ids"]) for s in samples) == dropped, task
    race = [json.loads(x) for x in (path.parent / "samples" / "race_h_0shot.jsonl").read_text().splitlines()]
    assert all("uncond_loglikelihood" in c for s in race for c in s["candidates"])

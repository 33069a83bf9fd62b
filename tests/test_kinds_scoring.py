"""Multiple-choice and generation scoring with a scripted model: which requests are sent, and how they are scored."""

from __future__ import annotations

import math

import pytest
import sacrebleu

from icl_eval import metrics
from icl_eval.compare.significance import paired_bootstrap
from icl_eval.evaluator import Settings, prepare, score_task
from icl_eval.registry import load_task
from icl_eval.requests import GenerationResult, LoglikelihoodResult
from fakes import ScriptedModel
from tasks_inline_data import write_inline_data


@pytest.fixture(scope="module")
def inline_root(tmp_path_factory):
    return write_inline_data(tmp_path_factory.mktemp("inline_scoring"))


def _score(task: str, model, root, shots: int = 1):
    prep = prepare(load_task(task), Settings(shots=(shots,), data_dir=str(root)))
    return score_task(prep, shots, model, Settings(shots=(shots,), data_dir=str(root)))


def test_full_choice_candidates_share_one_context_and_uncond_shares_answer(inline_root):
    model = ScriptedModel()
    run = _score("arc_easy", model, inline_root, shots=1)
    records, samples, _ = run.records, [s.to_json() for s in run.samples], run.truncation
    conditional = [r for r in model.ll_requests if r.context != "Answer:"]
    unconditional = [r for r in model.ll_requests if r.context == "Answer:"]
    assert len(conditional) == 16
    for i in range(0, 16, 4):  # each example's four candidates: one identical context string
        assert len({r.context for r in conditional[i : i + 4]}) == 1
    # One unconditional request per distinct answer text, all after the same neutral context.
    assert sorted(r.continuation for r in unconditional) == sorted({r.continuation for r in conditional})
    assert {r.metric for r in records} == {"acc", "acc_norm", "acc_uncond"}
    assert all(s["gold"] is not None and len(s["candidates"]) == 4 for s in samples)


def test_choice_rules_pick_as_the_paper_defines(inline_root):
    # Question 0: plants take in "carbon dioxide" (gold 1). Script the three rules to disagree.
    def score(context, cont):
        if context == "Answer:":  # unconditional: "carbon dioxide" is a priori unlikely
            return {" oxygen": -1.0, " carbon dioxide": -20.0}.get(cont, -5.0)
        return {" oxygen": -2.0, " carbon dioxide": -3.0, " helium": -9.0, " neon": -9.0}.get(cont, -1.0)

    run = _score("arc_easy", ScriptedModel(score), inline_root, shots=0)
    _, samples, _ = run.records, [s.to_json() for s in run.samples], run.truncation
    s = next(x for x in samples if x["doc_id"] == 0)
    # acc: oxygen has the largest sum; acc_norm: per character, -3/15 beats -2/7; acc_uncond: -3 - -20 is largest.
    assert s["predictions"] == {"acc": 0, "acc_norm": 1, "acc_uncond": 1}
    assert s["metrics"] == {"acc": 0.0, "acc_norm": 1.0, "acc_uncond": 1.0}
    cand = s["candidates"][1]
    assert cand["loglikelihood"] == -3.0 and cand["uncond_loglikelihood"] == -20.0 and cand["n_chars"] == len(" carbon dioxide")


def test_partial_scoring_puts_each_option_in_the_context(inline_root):
    def score(context, cont):
        return -1.0 if context.endswith("so Maria") else -4.0

    model = ScriptedModel(score)
    run = _score("winogrande", model, inline_root, shots=0)
    records, samples, _ = run.records, [s.to_json() for s in run.samples], run.truncation
    first = [r for r in model.ll_requests if r.context.startswith("Sarah")]
    assert [r.context for r in first] == ["Sarah was a better surgeon than Maria so Sarah", "Sarah was a better surgeon than Maria so Maria"]
    assert {r.continuation for r in first} == {" always got the easier cases."}
    s = next(x for x in samples if x["doc_id"] == 0)
    assert s["predictions"]["acc"] == 1 and s["metrics"]["acc"] == 1.0


def test_nonfinite_candidate_excludes_the_example(inline_root):
    model = ScriptedModel(lambda c, t: float("nan") if "Roof" in c and "wrap" in t else -1.0)
    run = _score("hellaswag", model, inline_root, shots=0)
    records, samples, counts = run.records, [s.to_json() for s in run.samples], run.truncation
    assert counts["nonfinite"] == 1 and records[0].n == 3
    assert next(s for s in samples if s["doc_id"] == 0)["nonfinite"]


def test_qa_exact_match_against_any_alias_and_f1(inline_root):
    replies = {"Who wrote Hamlet?": "shakespeare.", "What is the capital of France?": "The city of Paris"}

    def reply(context):
        question = context.rsplit("Q: ", 1)[1].split("\n")[0]
        return replies.get(question, "no idea")

    run = _score("triviaqa", ScriptedModel(reply=reply), inline_root, shots=0)
    records, samples, _ = run.records, [s.to_json() for s in run.samples], run.truncation
    by_doc = {s["doc_id"]: s for s in samples}
    assert by_doc[0]["metrics"]["exact_match"] == 1.0  # an alias, after normalisation
    assert by_doc[2]["metrics"]["exact_match"] == 0.0
    assert by_doc[2]["metrics"]["f1"] == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))
    assert by_doc[0]["references"] == ["William Shakespeare", "Shakespeare"]


def test_unscramble_exact_match_is_case_sensitive_strip_only(inline_root):
    model = ScriptedModel(reply=lambda c: " Casino" if c.endswith("asinoc =") else " cowboys ")
    run = _score("unscramble_cl", model, inline_root, shots=0)
    _, samples, _ = run.records, [s.to_json() for s in run.samples], run.truncation
    by_doc = {s["doc_id"]: s["metrics"]["exact_match"] for s in samples}
    assert by_doc[0] == 0.0 and by_doc[1] == 1.0
    assert model.gen_requests[0].until == ("\n",)


def test_translation_corpus_bleu_matches_sacrebleu_and_subsets_rescore(inline_root):
    hyps = {"The house is red.": "La maison est rouge.", "I like cheese.": "J'aime fromage.", "Where is the station?": "Où est gare ?", "It rains today.": "Il pleut."}

    def reply(context):
        return hyps[context.rsplit("translation of ", 1)[1].removesuffix(" A:")]

    run = _score("wmt14_en_fr", ScriptedModel(reply=reply), inline_root, shots=0)
    records, samples, _ = run.records, [s.to_json() for s in run.samples], run.truncation
    preds = [s["generation"] for s in samples]
    refs = [s["references"][0] for s in samples]
    bleu = next(r for r in records if r.metric == "bleu")
    assert bleu.value == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    chrf = next(r for r in records if r.metric == "chrf")
    assert chrf.value == pytest.approx(sacrebleu.corpus_chrf(preds, [refs]).score)
    # Any subset of the logged items gives that subset's corpus score (contamination rescoring, bootstrap).
    items = [s["metrics"]["bleu"] for s in samples]
    assert metrics.aggregate("bleu", items[:2])[0] == pytest.approx(sacrebleu.corpus_bleu(preds[:2], [refs[:2]]).score)
    assert bleu.stderr is not None and bleu.stderr > 0


def test_bleu_bootstrap_stderr_and_paired_test():
    refs = [[f"the cat number {i} sat on the mat today"] for i in range(40)]
    good = [f"the cat number {i} sat on the mat today" if i % 3 else f"a cat {i} sat there" for i in range(40)]
    bad = [f"a dog {i} ran" for i in range(40)]
    good_items = metrics.generation_items("bleu", good, refs)
    bad_items = metrics.generation_items("bleu", bad, refs)
    value, se = metrics.aggregate("bleu", good_items)
    assert value == pytest.approx(sacrebleu.corpus_bleu(good, [[r[0] for r in refs]]).score)
    assert 0 < se < value and metrics.aggregate("bleu", good_items) == (value, se)  # deterministic
    assert metrics.value("bleu", good_items) == value
    base = {str(i): bad_items[i] for i in range(40)}
    other = {str(i): good_items[i] for i in range(40)}
    sig = paired_bootstrap("bleu", base, other, score=metrics.value, n_resamples=200)
    assert sig.p_value is not None and sig.significant


def test_multi_reference_bleu_uses_every_reference():
    items = metrics.generation_items("bleu", ["the blue house is on the hill"], [["a red house stands there", "the blue house is on the hill"]])
    assert metrics.aggregate("bleu", items)[0] == pytest.approx(100.0)
    assert metrics.sacrebleu_signature("bleu", 2).startswith("nrefs:2|")


def test_choice_predictions_break_ties_to_the_first():
    r = [LoglikelihoodResult(-1.0, 1, 4, False), LoglikelihoodResult(-1.0, 1, 4, False)]
    assert metrics.choice_predictions(r, ["abc", "abc"]) == {"acc": 0, "acc_norm": 0, "acc_norm_token": 0}
    assert math.isnan(metrics.aggregate("bleu", [])[0])

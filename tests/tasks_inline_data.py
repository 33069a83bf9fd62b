"""Tiny inline data for every GPT-3 suite task, written in the layout of shared/data (so tests run without it)."""

from __future__ import annotations

import bz2
import gzip
import json
from pathlib import Path

import yaml

WMT = {
    "en-fr/newstest2014": {
        "en": ["The house is red.", "I like cheese.", "Where is the station?", "It rains today."],
        "fr": ["La maison est rouge.", "J'aime le fromage.", "Où est la gare ?", "Il pleut aujourd'hui."],
    },
    "en-de/newstest2016": {
        "en": ["Good morning.", "The dog sleeps.", "We are late.", "Thank you very much."],
        "de": ["Guten Morgen.", "Der Hund schläft.", "Wir sind spät.", "Vielen Dank."],
    },
    "en-ro/newstest2016": {
        "en": ["Hello friend.", "The book is new.", "Open the door.", "See you tomorrow."],
        "ro": ["Salut prieten.", "Cartea este nouă.", "Deschide ușa.", "Ne vedem mâine."],
    },
}
# TriviaQA DPR files: tab-separated, aliases as a Python list literal; one line CSV-quoted with doubled quotes.
TRIVIA_TEST = [
    ("Who wrote Hamlet?", ["William Shakespeare", "Shakespeare"]),
    ('Which band sang "Help!"?', ["The Beatles", "Beatles"]),
    ("What is the capital of France?", ["Paris"]),
    ("How many legs has a spider?", ["8", "Eight"]),
]
TRIVIA_DEV = [("What colour is the sky?", ["Blue"]), ("Who painted the Mona Lisa?", ["Leonardo da Vinci"]), ("What is H2O?", ["Water"])]
NQ = [
    {"question": "who was the first man on the moon", "answer": ["Neil Armstrong"]},
    {"question": "when did ww2 end", "answer": ["1945", "2 September 1945"]},
    {"question": "what is the largest planet", "answer": ["Jupiter"]},
    {"question": "who wrote the odyssey", "answer": ["Homer"]},
]
WEBQS_TEST = [
    {"qId": "t0", "qText": "what does jamaican people speak?", "answers": ["Jamaican English", "Jamaican Creole"]},
    {"qId": "t1", "qText": "where is paris located?", "answers": ["France"]},
    {"qId": "t2", "qText": "who is the ceo of apple?", "answers": ["Tim Cook"]},
    {"qId": "t3", "qText": "what currency does japan use?", "answers": ["Yen"]},
]
WEBQS_TRAIN = [
    {"qId": "r0", "qText": "what language do brazilians speak?", "answers": ["Portuguese"]},
    {"qId": "r1", "qText": "where was obama born?", "answers": ["Honolulu"]},
    {"qId": "r2", "qText": "what is the capital of spain?", "answers": ["Madrid"]},
]
UNSCRAMBLE = {
    "cycle_letters_in_word": [("asinoc", "casino"), ("yscowbo", "cowboys"), ("rslaye", "layers"), ("ndowwi", "window")],
    "mid_word_1_anagrams": [("skicts", "sticks"), ("moirrr", "mirror"), ("pnelat", "planet"), ("gadren", "garden")],
    "mid_word_2_anagrams": [("volwskagen", "volkswagen"), ("stnaoe", "stonae"), ("plaent", "planet"), ("gaedrn", "garden")],
    "random_insertion_in_word": [("r e!c.i p r o.c a/l", "reciprocal"), ("d.o m i!n a n.t", "dominant"), ("p/l a.n e t", "planet"), ("g!a r d/e n", "garden")],
    "reversed_words": [("taefed", "defeat"), ("denrecnoc", "concerned"), ("tenalp", "planet"), ("nedrag", "garden")],
}
HELLASWAG = [
    ("Roof shingle removal: A man is sitting on a roof. he", 3, ["is using wrap.", "is ripping tiles.", "is holding a cube.", "starts pulling up roofing."]),
    ("Clean and jerk: A lady walks to a barbell. the lady", 3, ["swings.", "pulls forward.", "pulls a rope.", "lifts the weight."]),
    ("Baking: A man mixes flour. he", 0, ["bakes bread.", "swims.", "sings loudly.", "runs away."]),
    ("Skiing: A girl is on a slope. she", 1, ["cooks.", "skis down.", "reads.", "sleeps."]),
]
PIQA = [
    ({"goal": "How do I dry a wet phone?", "sol1": "Put it in rice.", "sol2": "Put it in water."}, 0),
    ({"goal": "To open a jar,", "sol1": "hit it with a feather.", "sol2": "twist the lid hard."}, 1),
    ({"goal": "Keep bread fresh", "sol1": "store it in a bag.", "sol2": "leave it in the sun."}, 0),
    ({"goal": "To boil an egg,", "sol1": "freeze it.", "sol2": "put it in boiling water."}, 1),
]
ARC = [
    {"query": "Question: Which gas do plants take in?", "choices": ["oxygen", "carbon dioxide", "helium", "neon"], "gold": 1},
    {"query": "Question: What melts ice?", "choices": ["heat", "cold", "dark", "wind"], "gold": 0},
    {"query": "Question: Which is a mammal?", "choices": ["shark", "trout", "whale", "eel"], "gold": 2},
    {"query": "Question: What does a thermometer measure?", "choices": ["mass", "length", "speed", "temperature"], "gold": 3},
]
WINOGRANDE = [
    {"context_options": ["Sarah was a better surgeon than Maria so Sarah", "Sarah was a better surgeon than Maria so Maria"], "continuation": "always got the easier cases.", "gold": 1},
    {"context_options": ["The cup fit in the box because the cup", "The cup fit in the box because the box"], "continuation": "was small.", "gold": 0},
    {"context_options": ["Tom lent Bob money because Tom", "Tom lent Bob money because Bob"], "continuation": "was broke.", "gold": 1},
    {"context_options": ["The trophy did not fit the case as the trophy", "The trophy did not fit the case as the case"], "continuation": "was too big.", "gold": 0},
]
STORYCLOZE_HEADER = "InputStoryid,InputSentence1,InputSentence2,InputSentence3,InputSentence4,RandomFifthSentenceQuiz1,RandomFifthSentenceQuiz2,AnswerRightEnding"
STORYCLOZE = [
    'a1,Ann woke up.,She was hungry.,She made eggs.,"She ate them, slowly.",She felt full.,She felt hungry.,1',
    "a2,Bo went out.,It rained.,He got wet.,He went home.,He loved the rain.,He changed clothes.,2",
    "a3,Cy bought a dog.,The dog barked.,Cy fed it.,It calmed down.,Cy was happy.,Cy hated dogs.,1",
    "a4,Di ran a race.,She trained hard.,The day came.,She ran fast.,She lost badly.,She won the race.,2",
]

GENERATION_TASKS = [
    "wmt14_en_fr", "wmt14_fr_en", "wmt16_en_de", "wmt16_de_en", "wmt16_en_ro", "wmt16_ro_en", "triviaqa", "nq_open", "webqs",
    "unscramble_cl", "unscramble_a1", "unscramble_a2", "unscramble_ri", "unscramble_rw",
]
MC_TASKS = ["hellaswag", "piqa", "arc_easy", "arc_challenge", "winogrande", "storycloze"]
ALL_TASKS = GENERATION_TASKS + MC_TASKS


def _jsonl(path: Path, rows: list[dict], opener=open) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with opener(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _tsv_line(question: str, answers: list[str]) -> str:
    q = f'"{question.replace(chr(34), chr(34) * 2)}"' if '"' in question else question
    return f"{q}\t{answers!r}\n"


def write_inline_data(root: Path) -> Path:
    """Every task's files under root, in shared/data's layout; returns root."""
    for stem, columns in WMT.items():
        for lang, lines in columns.items():
            p = root / "wmt" / f"{stem}.{lang}"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    (root / "triviaqa").mkdir(parents=True, exist_ok=True)
    (root / "triviaqa/topics.dpr.trivia.test.txt").write_text("".join(_tsv_line(q, a) for q, a in TRIVIA_TEST), encoding="utf-8")
    (root / "triviaqa/topics.dpr.trivia.dev.txt").write_text("".join(_tsv_line(q, a) for q, a in TRIVIA_DEV), encoding="utf-8")
    _jsonl(root / "nq_open/NQ-open.dev.jsonl", NQ)
    (root / "webquestions").mkdir(parents=True, exist_ok=True)
    (root / "webquestions/test.json").write_text(json.dumps(WEBQS_TEST), encoding="utf-8")
    (root / "webquestions/trainmodel.json").write_text(json.dumps(WEBQS_TRAIN), encoding="utf-8")
    for name, pairs in UNSCRAMBLE.items():
        _jsonl(root / f"gpt3/{name}.jsonl.gz", [{"context": f"\n{s} =", "completion": f" {w}"} for s, w in pairs], gzip.open)
    (root / "hellaswag").mkdir(parents=True, exist_ok=True)
    with bz2.open(root / "hellaswag/hellaswag_val_full.txt.bz2", "wt", encoding="utf-8") as f:
        for ctx, label, endings in HELLASWAG:
            f.write("\n".join([ctx, str(label), *endings]) + "\n")
    _jsonl(root / "piqa/valid.jsonl", [d for d, _ in PIQA])
    (root / "piqa/valid-labels.lst").write_text("".join(f"{label}\n" for _, label in PIQA))
    _jsonl(root / "arc/arc_easy_test.llmfoundry.jsonl", ARC)
    _jsonl(root / "arc/arc_challenge_test.llmfoundry.jsonl", ARC[::-1])
    _jsonl(root / "winogrande/winogrande_dev.llmfoundry.jsonl", WINOGRANDE)
    (root / "storycloze").mkdir(parents=True, exist_ok=True)
    # The release's own file names; the validation file is the demonstration pool (here the same stories, reversed).
    (root / "storycloze/cloze_test_test__spring2016 - cloze_test_ALL_test.csv").write_text(STORYCLOZE_HEADER + "\n" + "\n".join(STORYCLOZE) + "\n", encoding="utf-8")
    (root / "storycloze/cloze_test_val__spring2016 - cloze_test_ALL_val.csv").write_text(STORYCLOZE_HEADER + "\n" + "\n".join(STORYCLOZE[::-1]) + "\n", encoding="utf-8")
    return root


def short_generation_copies(folder: Path, max_new_tokens: int = 4) -> Path:
    """Copies of the built-in generation tasks with few new tokens, to shadow them (--include-path) in fast
    end-to-end runs on a random model, which rarely stops early; everything else in the task is unchanged."""
    from icl_eval.registry import builtin_dir

    folder.mkdir(parents=True, exist_ok=True)
    for name in GENERATION_TASKS:
        raw = yaml.safe_load((builtin_dir("tasks") / f"{name}.yaml").read_text(encoding="utf-8"))
        raw["max_new_tokens"] = max_new_tokens
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return folder

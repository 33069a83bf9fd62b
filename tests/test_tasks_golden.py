"""Golden prompts: for every GPT-3 suite task, the exact strings the model is asked to score or continue.

Inline data (tests/tasks_inline_data.py) so these run anywhere; the demonstration ids are part of the golden value
(they are seeded by task, seed and doc id, so a change to the sampler shows up here too). A context that is one
string stands for every candidate (full multiple choice: all candidates share it); a list is one context per
candidate (partial scoring). Likewise for continuations.
"""

from __future__ import annotations

import json

import pytest

from icl_eval.cli import main
from icl_eval.evaluator import NoContextLimit
from icl_eval.evaluator import Settings, build_prompt, prepare
from icl_eval.registry import discover, load_task
from tasks_inline_data import ALL_TASKS, write_inline_data

GOLDEN = {
    ('wmt14_en_fr', 0): ([], 'Q: What is the French translation of The house is red. A:', ' La maison est rouge.'),
    ('wmt14_en_fr', 1): ([3], "It rains today. = Il pleut aujourd'hui.\n\nThe house is red. =", ' La maison est rouge.'),
    ('wmt14_en_fr', 3): ([3, 2, 1], "It rains today. = Il pleut aujourd'hui.\n\nWhere is the station? = Où est la gare ?\n\nI like cheese. = J'aime le fromage.\n\nThe house is red. =", ' La maison est rouge.'),
    ('wmt14_fr_en', 0): ([], 'Q: What is the English translation of La maison est rouge. A:', ' The house is red.'),
    ('wmt14_fr_en', 1): ([2], 'Où est la gare ? = Where is the station?\n\nLa maison est rouge. =', ' The house is red.'),
    ('wmt14_fr_en', 3): ([2, 3, 1], "Où est la gare ? = Where is the station?\n\nIl pleut aujourd'hui. = It rains today.\n\nJ'aime le fromage. = I like cheese.\n\nLa maison est rouge. =", ' The house is red.'),
    ('wmt16_en_de', 0): ([], 'Q: What is the German translation of Good morning. A:', ' Guten Morgen.'),
    ('wmt16_en_de', 1): ([2], 'We are late. = Wir sind spät.\n\nGood morning. =', ' Guten Morgen.'),
    ('wmt16_en_de', 3): ([2, 3, 1], 'We are late. = Wir sind spät.\n\nThank you very much. = Vielen Dank.\n\nThe dog sleeps. = Der Hund schläft.\n\nGood morning. =', ' Guten Morgen.'),
    ('wmt16_de_en', 0): ([], 'Q: What is the English translation of Guten Morgen. A:', ' Good morning.'),
    ('wmt16_de_en', 1): ([3], 'Vielen Dank. = Thank you very much.\n\nGuten Morgen. =', ' Good morning.'),
    ('wmt16_de_en', 3): ([3, 1, 2], 'Vielen Dank. = Thank you very much.\n\nDer Hund schläft. = The dog sleeps.\n\nWir sind spät. = We are late.\n\nGuten Morgen. =', ' Good morning.'),
    ('wmt16_en_ro', 0): ([], 'Q: What is the Romanian translation of Hello friend. A:', ' Salut prieten.'),
    ('wmt16_en_ro', 1): ([3], 'See you tomorrow. = Ne vedem mâine.\n\nHello friend. =', ' Salut prieten.'),
    ('wmt16_en_ro', 3): ([3, 1, 2], 'See you tomorrow. = Ne vedem mâine.\n\nThe book is new. = Cartea este nouă.\n\nOpen the door. = Deschide ușa.\n\nHello friend. =', ' Salut prieten.'),
    ('wmt16_ro_en', 0): ([], 'Q: What is the English translation of Salut prieten. A:', ' Hello friend.'),
    ('wmt16_ro_en', 1): ([2], 'Deschide ușa. = Open the door.\n\nSalut prieten. =', ' Hello friend.'),
    ('wmt16_ro_en', 3): ([2, 3, 1], 'Deschide ușa. = Open the door.\n\nNe vedem mâine. = See you tomorrow.\n\nCartea este nouă. = The book is new.\n\nSalut prieten. =', ' Hello friend.'),
    ('triviaqa', 0): ([], 'Q: Who wrote Hamlet?\nA:', ' Shakespeare'),
    ('triviaqa', 1): ([0], 'Q: What colour is the sky?\nA: Blue\n\nQ: Who wrote Hamlet?\nA:', ' Shakespeare'),
    ('triviaqa', 3): ([0, 1, 2], 'Q: What colour is the sky?\nA: Blue\n\nQ: Who painted the Mona Lisa?\nA: Leonardo da Vinci\n\nQ: What is H2O?\nA: Water\n\nQ: Who wrote Hamlet?\nA:', ' Shakespeare'),
    ('nq_open', 0): ([], 'Q: who was the first man on the moon?\nA:', ' Neil Armstrong'),
    ('nq_open', 1): ([1], 'Q: when did ww2 end?\nA: 1945\n\nQ: who was the first man on the moon?\nA:', ' Neil Armstrong'),
    ('nq_open', 3): ([1, 3, 2], 'Q: when did ww2 end?\nA: 1945\n\nQ: who wrote the odyssey?\nA: Homer\n\nQ: what is the largest planet?\nA: Jupiter\n\nQ: who was the first man on the moon?\nA:', ' Neil Armstrong'),
    ('webqs', 0): ([], 'Q: what does jamaican people speak?\nA:', ' Jamaican English'),
    ('webqs', 1): ([1], 'Q: where was obama born?\nA: Honolulu\n\nQ: what does jamaican people speak?\nA:', ' Jamaican English'),
    ('webqs', 3): ([1, 2, 0], 'Q: where was obama born?\nA: Honolulu\n\nQ: what is the capital of spain?\nA: Madrid\n\nQ: what language do brazilians speak?\nA: Portuguese\n\nQ: what does jamaican people speak?\nA:', ' Jamaican English'),
    ('unscramble_cl', 0): ([], 'Please unscramble the letters into a word, and write that word:\nasinoc =', ' casino'),
    ('unscramble_cl', 1): ([3], 'Please unscramble the letters into a word, and write that word:\nndowwi = window\nasinoc =', ' casino'),
    ('unscramble_cl', 3): ([3, 2, 1], '\nndowwi = window\nrslaye = layers\nyscowbo = cowboys\nasinoc =', ' casino'),
    ('unscramble_a1', 0): ([], 'Please unscramble the letters into a word, and write that word:\nskicts =', ' sticks'),
    ('unscramble_a1', 1): ([1], 'Please unscramble the letters into a word, and write that word:\nmoirrr = mirror\nskicts =', ' sticks'),
    ('unscramble_a1', 3): ([1, 3, 2], '\nmoirrr = mirror\ngadren = garden\npnelat = planet\nskicts =', ' sticks'),
    ('unscramble_a2', 0): ([], 'Please unscramble the letters into a word, and write that word:\nvolwskagen =', ' volkswagen'),
    ('unscramble_a2', 1): ([1], 'Please unscramble the letters into a word, and write that word:\nstnaoe = stonae\nvolwskagen =', ' volkswagen'),
    ('unscramble_a2', 3): ([1, 3, 2], '\nstnaoe = stonae\ngaedrn = garden\nplaent = planet\nvolwskagen =', ' volkswagen'),
    ('unscramble_ri', 0): ([], 'Please unscramble the letters into a word, and write that word:\nr e!c.i p r o.c a/l =', ' reciprocal'),
    ('unscramble_ri', 1): ([2], 'Please unscramble the letters into a word, and write that word:\np/l a.n e t = planet\nr e!c.i p r o.c a/l =', ' reciprocal'),
    ('unscramble_ri', 3): ([2, 3, 1], '\np/l a.n e t = planet\ng!a r d/e n = garden\nd.o m i!n a n.t = dominant\nr e!c.i p r o.c a/l =', ' reciprocal'),
    ('unscramble_rw', 0): ([], 'Please unscramble the letters into a word, and write that word:\ntaefed =', ' defeat'),
    ('unscramble_rw', 1): ([3], 'Please unscramble the letters into a word, and write that word:\nnedrag = garden\ntaefed =', ' defeat'),
    ('unscramble_rw', 3): ([3, 1, 2], '\nnedrag = garden\ndenrecnoc = concerned\ntenalp = planet\ntaefed =', ' defeat'),
    ('hellaswag', 0): ([], 'Roof shingle removal: A man is sitting on a roof. he', [' is using wrap.', ' is ripping tiles.', ' is holding a cube.', ' starts pulling up roofing.']),
    ('hellaswag', 1): ([1], 'Clean and jerk: A lady walks to a barbell. the lady lifts the weight.\n\nRoof shingle removal: A man is sitting on a roof. he', [' is using wrap.', ' is ripping tiles.', ' is holding a cube.', ' starts pulling up roofing.']),
    ('hellaswag', 3): ([1, 2, 3], 'Clean and jerk: A lady walks to a barbell. the lady lifts the weight.\n\nBaking: A man mixes flour. he bakes bread.\n\nSkiing: A girl is on a slope. she skis down.\n\nRoof shingle removal: A man is sitting on a roof. he', [' is using wrap.', ' is ripping tiles.', ' is holding a cube.', ' starts pulling up roofing.']),
    ('piqa', 0): ([], 'How do I dry a wet phone?', [' Put it in rice.', ' Put it in water.']),
    ('piqa', 1): ([1], 'To open a jar, twist the lid hard.\n\nHow do I dry a wet phone?', [' Put it in rice.', ' Put it in water.']),
    ('piqa', 3): ([1, 3, 2], 'To open a jar, twist the lid hard.\n\nTo boil an egg, put it in boiling water.\n\nKeep bread fresh store it in a bag.\n\nHow do I dry a wet phone?', [' Put it in rice.', ' Put it in water.']),
    ('arc_easy', 0): ([], 'Question: Which gas do plants take in? Answer:', [' oxygen', ' carbon dioxide', ' helium', ' neon']),
    ('arc_easy', 1): ([3], 'Question: What does a thermometer measure? Answer: temperature\n\nQuestion: Which gas do plants take in? Answer:', [' oxygen', ' carbon dioxide', ' helium', ' neon']),
    ('arc_easy', 3): ([3, 2, 1], 'Question: What does a thermometer measure? Answer: temperature\n\nQuestion: Which is a mammal? Answer: whale\n\nQuestion: What melts ice? Answer: heat\n\nQuestion: Which gas do plants take in? Answer:', [' oxygen', ' carbon dioxide', ' helium', ' neon']),
    ('arc_challenge', 0): ([], 'Question: What does a thermometer measure? Answer:', [' mass', ' length', ' speed', ' temperature']),
    ('arc_challenge', 1): ([2], 'Question: What melts ice? Answer: heat\n\nQuestion: What does a thermometer measure? Answer:', [' mass', ' length', ' speed', ' temperature']),
    ('arc_challenge', 3): ([2, 3, 1], 'Question: What melts ice? Answer: heat\n\nQuestion: Which gas do plants take in? Answer: carbon dioxide\n\nQuestion: Which is a mammal? Answer: whale\n\nQuestion: What does a thermometer measure? Answer:', [' mass', ' length', ' speed', ' temperature']),
    ('winogrande', 0): ([], ['Sarah was a better surgeon than Maria so Sarah', 'Sarah was a better surgeon than Maria so Maria'], ' always got the easier cases.'),
    ('winogrande', 1): ([1], ['The cup fit in the box because the cup was small.\n\nSarah was a better surgeon than Maria so Sarah', 'The cup fit in the box because the cup was small.\n\nSarah was a better surgeon than Maria so Maria'], ' always got the easier cases.'),
    ('winogrande', 3): ([1, 2, 3], ['The cup fit in the box because the cup was small.\n\nTom lent Bob money because Bob was broke.\n\nThe trophy did not fit the case as the trophy was too big.\n\nSarah was a better surgeon than Maria so Sarah', 'The cup fit in the box because the cup was small.\n\nTom lent Bob money because Bob was broke.\n\nThe trophy did not fit the case as the trophy was too big.\n\nSarah was a better surgeon than Maria so Maria'], ' always got the easier cases.'),
    ('storycloze', 0): ([], 'Ann woke up. She was hungry. She made eggs. She ate them, slowly.', [' She felt full.', ' She felt hungry.']),
    ('storycloze', 1): ([0], 'Di ran a race. She trained hard. The day came. She ran fast. She won the race.\n\nAnn woke up. She was hungry. She made eggs. She ate them, slowly.', [' She felt full.', ' She felt hungry.']),
    ('storycloze', 3): ([0, 1, 2], 'Di ran a race. She trained hard. The day came. She ran fast. She won the race.\n\nCy bought a dog. The dog barked. Cy fed it. It calmed down. Cy was happy.\n\nBo went out. It rained. He got wet. He went home. He changed clothes.\n\nAnn woke up. She was hungry. She made eggs. She ate them, slowly.', [' She felt full.', ' She felt hungry.']),
}


@pytest.fixture(scope="module")
def inline_root(tmp_path_factory):
    return write_inline_data(tmp_path_factory.mktemp("inline_data"))


def _expand(value, n: int) -> list[str]:
    return [value] * n if isinstance(value, str) else list(value)


@pytest.mark.parametrize("task,shots", sorted(GOLDEN))
def test_golden_prompt(task, shots, inline_root):
    ids, contexts, continuations = GOLDEN[(task, shots)]
    prep = prepare(load_task(task), Settings(data_dir=str(inline_root)))
    p = build_prompt(prep, 0, shots, 1234, NoContextLimit())
    n = len(p.pairs)
    assert list(p.fewshot_ids) == ids
    assert [c for c, _ in p.pairs] == _expand(contexts, n)
    assert [t for _, t in p.pairs] == _expand(continuations, n)


def test_every_task_has_golden_prompts_and_is_listed(capsys):
    assert {t for t, _ in GOLDEN} == set(ALL_TASKS)
    assert set(ALL_TASKS) <= set(discover())
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    for name in ALL_TASKS:
        assert name in out


def test_prompt_command_shows_every_candidate(inline_root, capsys):
    assert main(["prompt", "arc_easy", "--shots", "1", "--index", "0", "--data-dir", str(inline_root)]) == 0
    out = capsys.readouterr().out
    assert "4 candidates (full scoring), gold 1" in out
    assert "* [1] ' carbon dioxide'" in out and "  [0] ' oxygen'" in out
    assert main(["prompt", "winogrande", "--shots", "0", "--index", "0", "--data-dir", str(inline_root)]) == 0
    out = capsys.readouterr().out
    assert "2 candidates (partial scoring), gold 1" in out
    assert "* [1] 'Sarah was a better surgeon than Maria so Maria' -> ' always got the easier cases.'" in out


def test_validate_multiple_choice_task(inline_root, capsys):
    from icl_eval.registry import builtin_dir

    assert main(["validate", str(builtin_dir("tasks") / "hellaswag.yaml"), "--data-dir", str(inline_root)]) == 0
    captured = capsys.readouterr()
    assert "ok:" in captured.err and "multiple_choice" in captured.err and "4 candidates" in captured.out


# The first example of the real files (shared/data), zero- and one-shot; skipped when shared/ is absent.
SHARED_ZERO_SHOT = {
    "wmt14_en_fr": ("Q: What is the French translation of Spectacular Wingsuit Jump Over Bogota A:", ' Spectaculaire saut en "wingsuit" au-dessus de Bogota'),
    "wmt16_ro_en": ("Q: What is the English translation of Șeful ONU declară că nu există soluții militare în Siria A:", " UN Chief Says There Is No Military Solution in Syria"),
    "triviaqa": ("Q: Who was the man behind The Chipmunks?\nA:", " David Seville"),
    "nq_open": ("Q: when was the last time anyone was on the moon?\nA:", " 14 December 1972 UTC"),
    "webqs": ("Q: what does jamaican people speak?\nA:", " Jamaican Creole English Language"),
    "unscramble_cl": ("Please unscramble the letters into a word, and write that word:\nasinoc =", " casino"),
    "unscramble_ri": ("Please unscramble the letters into a word, and write that word:\nr e!c.i p r o.c a/l =", " reciprocal"),
    "hellaswag": ("Roof shingle removal: A man is sitting on a roof. he", " starts pulling up roofing on a roof."),
    "piqa": ("How do I ready a guinea pig cage for it's new occupants?", " Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, you will also need to supply it with a water bottle and a food dish."),
    "arc_easy": ("Question: Which statement best explains why photosynthesis is the foundation of most food webs? Answer:", " Sunlight is the source of energy for nearly all ecosystems."),
    "winogrande": ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases."),
}


@pytest.mark.parametrize("task", sorted(SHARED_ZERO_SHOT))
def test_golden_prompt_on_shared_data(task, shared):
    prep = prepare(load_task(task), Settings(data_dir=str(shared / "data")))
    p = build_prompt(prep, 0, 0, 1234, NoContextLimit())
    assert (p.context, p.target) == SHARED_ZERO_SHOT[task]  # the gold candidate for multiple choice
    one = build_prompt(prep, 0, 1, 1234, NoContextLimit())
    demo = prep.example(one.fewshot_ids[0], from_pool=True)
    task_cfg = prep.task
    if task.startswith("unscramble"):  # the description stays at one shot, the released strings follow verbatim
        assert one.context == task_cfg.description + demo.input + demo.target + p.context.removeprefix(task_cfg.description)
    elif not task.startswith("wmt"):
        assert one.context == demo.input + " " + demo.target + "\n\n" + p.context


def test_shared_data_sizes(shared):
    sizes = {"wmt14_en_fr": 3003, "wmt16_en_de": 2999, "wmt16_en_ro": 1999, "triviaqa": 11313, "nq_open": 3610, "webqs": 2032,
             "unscramble_a1": 10000, "hellaswag": 10042, "piqa": 1838, "arc_easy": 2376, "arc_challenge": 1172, "winogrande": 1267}
    for task, n in sizes.items():
        assert len(prepare(load_task(task), Settings(data_dir=str(shared / "data"))).docs) == n, task
    trivia = prepare(load_task("triviaqa"), Settings(data_dir=str(shared / "data")))
    assert len(trivia.pool) == 8837 and not trivia.same_split
    # A CSV-quoted line with doubled quotes inside is read as one question with its aliases list.
    assert all(isinstance(d["answers"], list) and d["answers"] for d in trivia.docs)
    assert json.dumps(trivia.docs[0]["answers"]) == '["David Seville"]'

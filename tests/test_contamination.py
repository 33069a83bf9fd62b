"""Contamination checking: normalisation, the hashing kernel, planted matches, bad input, engines, cache, rescoring."""

from __future__ import annotations

import gzip
import io
import json
import multiprocessing
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from icl_eval.contamination import engines
from icl_eval.contamination.cli import check
from icl_eval.contamination.index import build_index, choose_n
from icl_eval.contamination.ngrams import gram_hashes, hash_text, normalise_batch
from icl_eval.contamination.normalise import DROP, SPACE, nfkc, normalise, table
from icl_eval.contamination.rescore import rescore_runs
from icl_eval.contamination.scan import ScanOptions
from icl_eval.errors import IclEvalError
from icl_eval.metrics import aggregate

VOCAB = [f"w{i}" for i in range(5000)]


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def run_check(examples: list[str], corpus: list[str], ngram: str = "13", **kw):
    index = build_index([("t", "both", list(enumerate(examples)))], ngram)
    options = ScanOptions(boilerplate=kw.pop("boilerplate", 10))
    report = check(index, corpus, options, workers=kw.pop("workers", 1), **kw).report
    return report["tasks"]["t"], report


# --- normalisation and the kernel ---------------------------------------------------------------------------


def test_normalisation_lowercases_drops_punctuation_and_unifies_unicode():
    assert normalise("Don't STOP, “friend”!  Go_on...") == ["dont", "stop", "friend", "goon"]
    # composed vs decomposed accent, full-width letters, ligature, non-breaking and thin spaces
    assert normalise("Cafe\u0301 ＡＢＣ ﬁne\u00a0x\u2009y") == normalise("café abc fine x y") == ["café", "abc", "fine", "x", "y"]
    assert normalise("") == [] and normalise(" ,;: ") == []


def test_kernel_hashes_equal_text_equally_and_never_crosses_documents():
    rng = random.Random(0)
    docs = [words(rng, rng.randint(0, 30)) + rng.choice([",", " !", "", " ...  "]) for _ in range(200)]
    batch = normalise_batch(docs)
    for length in (1, 3, 13):
        first, h = gram_hashes(batch, length)
        expected = [(d, i) for d, t in enumerate(docs) for i in range(len(normalise(t)) - length + 1)]
        assert len(first) == len(expected)  # exactly the n-grams inside each document
        assert all(batch.doc[w] == batch.doc[w + length - 1] for w in first.tolist())
        assert batch.keys(first, length) == [batch.text(w, w + length) for w in first.tolist()]
        for w, value in list(zip(first.tolist(), h.tolist()))[:300]:
            assert value == hash_text(batch.text(w, w + length).split(" "))
    assert [batch.words(d) for d in range(len(docs))] == [normalise(t) for t in docs]


def reference_words(text: str) -> list[str]:
    """The definition, a character at a time: NFKC on every document, then the table (beyond the BMP: removed)."""
    lookup = table()
    out = []
    for ch in nfkc(text.replace("\x00", " ")):
        v = int(lookup[ord(ch)]) if ord(ch) < 0x10000 else DROP
        out.append(" " if v == SPACE else "" if v == DROP else chr(v))
    return "".join(out).split()


def test_nfkc_is_skipped_only_where_it_cannot_change_the_words():
    # Every BMP character between letters, doubled, and after a precomposed letter and a Hangul syllable; no other
    # character in its document needs NFKC, so a character wrongly let through is caught.
    chars = [chr(cp) for cp in range(1, 0x10000) if not 0xD800 <= cp < 0xE000]
    docs = [f"a{c}b {c}{c} é{c} 가{c}" for c in chars]
    batch = normalise_batch(docs)
    assert [batch.words(d) for d in range(len(docs))] == [reference_words(t) for t in docs]


def test_mixed_unicode_batches_match_per_document_nfkc():
    pool = list("abcXYZ09 ,.'-_\t\n") + [
        "é", "e\u0301", "\u0301", "\u0323", "\u0316", "\u1100", "\u1161", "\u11a8", "가", "²", "½", "ﬁ", "Ａ",
        "\xa0", "…", "\u2009", "\U0001d400", "\U0001f600", "İ", "ß", "Σ", "\x00", "\u0f73", "\u09be", "\u09c7",
        "ｶ", "\uff9e", "\u212b", "\u0344", "™", "\u3000", "\U00011099\U000110ba",
    ]
    rng = random.Random(5)
    for _ in range(40):
        docs = ["".join(rng.choices(pool, k=rng.randint(0, 25))) for _ in range(rng.randint(1, 60))]
        batch = normalise_batch(docs)
        assert [batch.words(d) for d in range(len(docs))] == [reference_words(t) for t in docs]


# --- matching --------------------------------------------------------------------------------------------------


def test_planted_verbatim_and_lightly_edited_copies_are_found(tmp_path):
    rng = random.Random(1)
    examples = [words(rng, 40) for _ in range(6)]
    ws = [e.split() for e in examples]
    edited = ws[1].copy()
    edited[20] = "changed"  # one word changed in the middle: the n-grams away from it still match
    corpus = [words(rng, 200) for _ in range(50)]
    corpus[3] += " " + examples[0]
    corpus[7] = words(rng, 5) + " " + ", ".join(w.upper() for w in edited) + "!"  # case, punctuation
    corpus[9] = "Intro:\n\n" + "  ".join(ws[2][:25]) + "\t" + " ".join(ws[2][25:]) + "."  # whitespace
    task, report = run_check(examples, [str(write_jsonl(tmp_path / "c.jsonl", corpus))])
    by_id = {e["doc_id"]: e for e in task["examples"]}
    assert [by_id[i]["dirty"] for i in range(6)] == [True, True, True, False, False, False]
    assert by_id[0]["fraction_found"] == 1.0 and by_id[0]["longest_match_words"] == 40
    assert 0 < by_id[1]["fraction_found"] < 1 and by_id[1]["longest_match_words"] == 20
    assert by_id[0]["documents"][0]["id"].endswith("c.jsonl:4") and by_id[0]["documents_matched"] == 1
    assert "[" in by_id[0]["documents"][0]["snippet"]
    assert (task["total"], task["dirty"], task["clean"]) == (6, 3, 3)
    assert report["scan"]["docs"] == 50


def test_ngram_spanning_two_documents_is_not_counted(tmp_path):
    rng = random.Random(2)
    example = words(rng, 13)
    ws = example.split()
    corpus = [words(rng, 10) + " " + " ".join(ws[:7]), " ".join(ws[7:]) + " " + words(rng, 10)]
    task, _ = run_check([example], [str(write_jsonl(tmp_path / "c.jsonl", corpus))])
    assert not task["examples"][0]["dirty"]
    # the same words inside one document do match
    task, _ = run_check([example], [str(write_jsonl(tmp_path / "d.jsonl", [" ".join(corpus)]))])
    assert task["examples"][0]["dirty"]


def test_boilerplate_ngrams_are_ignored_and_the_threshold_is_configurable(tmp_path):
    rng = random.Random(3)
    example = words(rng, 13)
    corpus = [words(rng, 20) + " " + example for _ in range(11)] + [words(rng, 20) for _ in range(5)]
    path = str(write_jsonl(tmp_path / "c.jsonl", corpus))
    task, _ = run_check([example], [path])  # in 11 documents > 10: boilerplate
    assert not task["examples"][0]["dirty"] and task["examples"][0]["boilerplate_ngrams_ignored"] == 1
    task, _ = run_check([example], [path], boilerplate=11)
    assert task["examples"][0]["dirty"] and task["examples"][0]["documents_matched"] == 11
    # split across shards, the document counts still add up
    write_jsonl(tmp_path / "p1.jsonl", corpus[:6])
    write_jsonl(tmp_path / "p2.jsonl", corpus[6:])
    task, _ = run_check([example], [str(tmp_path / "p*.jsonl")])
    assert not task["examples"][0]["dirty"]


def test_short_examples_are_matched_whole(tmp_path):
    rng = random.Random(4)
    short = "Q: What is 98 plus 45? A: 143"  # 8 words < 13
    other = "Q: What is 12 plus 7? A: 19"
    corpus = [words(rng, 30) + " q what is 98 plus 45 a 143 " + words(rng, 5), words(rng, 30) + " what is 12 plus 7 a"]
    task, _ = run_check([short, other], [str(write_jsonl(tmp_path / "c.jsonl", corpus))])
    assert [e["dirty"] for e in task["examples"]] == [True, False]
    assert task["examples"][0]["matched_whole"] and task["n"] == 13


def test_a_hash_collision_never_marks_an_example_dirty(tmp_path):
    rng = random.Random(5)
    example = words(rng, 13)
    index = build_index([("t", "both", [(0, example)])], "13")
    # Forge a collision: the table claims the corpus n-gram's hash belongs to a gram with other text.
    forged = words(rng, 13)
    index.table.texts[0] = normalise_batch([forged]).keys(np.array([0]), 13)[0]
    path = str(write_jsonl(tmp_path / "c.jsonl", [example]))
    report = check(index, [path], ScanOptions(), workers=1).report
    assert not report["tasks"]["t"]["examples"][0]["dirty"]


def test_gpt3_n_is_the_5th_percentile_length_clamped():
    assert choose_n("gpt3", [20] * 100) == 13
    assert choose_n("gpt3", [3] * 10 + [50] * 90) == 8
    assert choose_n("gpt3", [10] * 100) == 10
    assert choose_n("13", []) == 13
    with pytest.raises(IclEvalError, match="--ngram"):
        choose_n("thirteen", [])


# --- corpus formats and bad input ---------------------------------------------------------------------------


def test_corrupt_gzip_member_and_bad_json_line_are_reported_and_skipped(tmp_path):
    rng = random.Random(6)
    examples = [words(rng, 20) for _ in range(3)]
    good1 = gzip.compress((json.dumps({"text": examples[0]}) + "\n{not json\n" + json.dumps({"body": "x"}) + "\n").encode())
    bad = bytearray(gzip.compress("".join(json.dumps({"text": words(rng, 50)}) + "\n" for _ in range(200)).encode()))
    bad[len(bad) // 2: len(bad) // 2 + 40] = b"\x00" * 40  # damage the middle of the second member
    good3 = gzip.compress((json.dumps({"text": examples[2]}) + "\n").encode())
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(good1 + bytes(bad) + good3)
    task, report = run_check(examples, [str(path)])
    assert [e["dirty"] for e in task["examples"]] == [True, False, True]  # the member after the damage is read
    counts = report["skipped_input"]["counts"]
    assert counts["bad_json_lines"] == 1 and counts["missing_text_field"] == 1 and counts["corrupt_compressed_data"] == 1
    first = report["skipped_input"]["first"]
    assert any(f"{path}:2: not valid JSON" in p for p in first) and any("corrupt gzip" in p for p in first)


def test_text_zst_and_parquet_corpora(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    rng = random.Random(7)
    examples = [words(rng, 15) for _ in range(4)]
    (tmp_path / "a.txt").write_text(words(rng, 9) + "\n" + examples[0] + "\n")
    (tmp_path / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress((json.dumps({"content": examples[1]}) + "\n").encode()))
    pq.write_table(pa.table({"content": [words(rng, 9), examples[2]]}), tmp_path / "c.parquet")
    index = build_index([("t", "both", list(enumerate(examples)))], "13")
    report = check(index, [str(tmp_path / "a.txt")], ScanOptions(), workers=1).report
    assert [e["dirty"] for e in report["tasks"]["t"]["examples"]] == [True, False, False, False]
    report = check(index, [str(tmp_path / "b.jsonl.zst"), str(tmp_path / "c.parquet")], ScanOptions(text_field="content"), workers=1).report
    assert [e["dirty"] for e in report["tasks"]["t"]["examples"]] == [False, True, True, False]
    assert report["tasks"]["t"]["examples"][2]["documents"][0]["id"].endswith("c.parquet#2")


def test_unknown_files_and_empty_globs_are_one_clear_error(tmp_path):
    index = build_index([("t", "both", [(0, "a b c")])], "13")
    (tmp_path / "x.csv").write_text("a\n")
    with pytest.raises(IclEvalError, match="unknown corpus file type"):
        check(index, [str(tmp_path / "x.csv")], ScanOptions(), workers=1)
    with pytest.raises(IclEvalError, match="no files match"):
        check(index, [str(tmp_path / "nothing*.jsonl")], ScanOptions(), workers=1)


# --- engines and cache ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    rng = random.Random(8)
    root = tmp_path_factory.mktemp("shards")
    examples = [words(rng, rng.choice([6, 20, 40])) for _ in range(30)]
    common = words(rng, 13)
    examples.append(common + " " + words(rng, 5))
    for s in range(4):
        docs = [words(rng, 100) for _ in range(300)]
        for i in range(0, 30, 4):
            docs[(i * 7 + s) % 300] += " " + examples[(i + s) % 30]
        for i in range(4):
            docs[i + 10] += " " + common  # 16 documents in all: boilerplate
        write_jsonl(root / f"part{s}.jsonl", docs)
    index = build_index([("t", "both", list(enumerate(examples)))], "13")
    return index, [str(root / "part*.jsonl")]


@pytest.mark.parametrize("start", ["spawn", "fork"])
def test_local_pool_and_single_process_agree(sharded, start, monkeypatch):
    if start not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {start} on this platform")
    monkeypatch.setattr(engines, "_start_method", lambda: start)
    index, corpus = sharded
    one = check(index, corpus, ScanOptions(), workers=1).report
    two = check(index, corpus, ScanOptions(), workers=2).report
    assert one["tasks"] == two["tasks"]
    assert 0 < one["tasks"]["t"]["dirty"] < one["tasks"]["t"]["total"]
    assert one["tasks"]["t"]["examples"][-1]["boilerplate_ngrams_ignored"] == 1


def test_the_command_leaves_torch_unloaded_so_scan_workers_can_fork():
    # With torch loaded the pool must spawn, and every spawned worker re-imports the command: seconds each.
    code = "import sys, icl_eval.cli; from icl_eval.contamination import engines; print(engines._start_method(), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[1] == "False"
    if sys.platform == "linux":
        assert out[0] == "fork"


def test_dask_local_cluster_gives_identical_results(sharded):
    pytest.importorskip("dask.distributed")
    index, corpus = sharded
    local = check(index, corpus, ScanOptions(), workers=1).report
    with engines.local_cluster(2) as cluster:  # 2 real worker processes on loopback
        remote = check(index, corpus, ScanOptions(), engine="dask", scheduler=cluster.scheduler_address).report
    assert remote["tasks"] == local["tasks"]
    assert remote["scan"]["docs"] == local["scan"]["docs"] == 1200


def test_scan_cache_is_reused_and_invalidated(sharded, tmp_path, monkeypatch):
    index, corpus = sharded
    first = check(index, corpus, ScanOptions(), workers=1, cache_dir=tmp_path)
    calls = []
    monkeypatch.setattr(engines, "run", lambda *a, **k: calls.append(a) or [])
    again = check(index, corpus, ScanOptions(), workers=1, cache_dir=tmp_path)
    assert again.from_cache and not calls and again.report["tasks"] == first.report["tasks"]
    assert list(tmp_path.glob("*.json")) and not list(tmp_path.glob("*.pkl"))
    check(index, corpus, ScanOptions(boilerplate=3), workers=1, cache_dir=tmp_path)  # another key: scans
    assert len(calls) == 1


# --- CLI and rescoring --------------------------------------------------------------------------------------

TASK = """
name: planted
output_type: loglikelihood
template: planted.jinja
metrics: [acc, perplexity]
contamination_fields: input
data:
  local: planted.jsonl
"""


def test_cli_end_to_end_and_rescoring(tmp_path):
    rng = random.Random(9)
    docs = [{"text": words(rng, 20), "answer": "x"} for _ in range(8)]
    (tmp_path / "planted.yaml").write_text(TASK)
    (tmp_path / "planted.jinja").write_text("{% block input %}{{ text }}{% endblock %}{% block target %}{{ answer }}{% endblock %}")
    (tmp_path / "planted.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    write_jsonl(tmp_path / "corpus.jsonl", [words(rng, 30) + " " + docs[i]["text"] for i in (1, 4, 6)])
    out = tmp_path / "out"
    def cli(corpus: Path) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "icl_eval", "contamination", "--tasks", "planted", "--include-path", str(tmp_path),
               "--data-dir", str(tmp_path), "--corpus", str(corpus), "--output", str(out), "--no-cache", "--workers", "1"]
        return subprocess.run(cmd, capture_output=True, text=True)

    done = cli(tmp_path / "corpus.jsonl")
    assert done.returncode == 0, done.stderr
    assert "| planted | 13 | input | 8 | 3 | 5 | 62.5 |" in done.stdout
    report = json.loads((out / "contamination.json").read_text())
    assert sorted(e["doc_id"] for e in report["tasks"]["planted"]["examples"] if e["dirty"]) == [1, 4, 6]

    # a run's sample logs, rescored on all / clean / dirty with the metric's own aggregate
    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    acc = [1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    (run / "samples" / "planted_0shot.jsonl").write_text("".join(json.dumps({"doc_id": i, "metrics": {"acc": a}}) + "\n" for i, a in enumerate(acc)))
    records = [{"task": "planted", "shots": 0, "metric": "acc", "value": 0.5}]
    rows, text = rescore_runs(report, [("", run, records)])
    (row,) = rows
    assert (row["n_all"], row["n_dirty"], row["n_clean"]) == (8, 3, 5)
    assert row["dirty"] == aggregate("acc", [1.0, 1.0, 1.0])[0] == 1.0
    assert row["clean"] == pytest.approx(0.2) and row["all"] == 0.5
    assert row["relative_change"] == pytest.approx(-0.6) and "-60.0%" in text

    bad = cli(tmp_path / "missing*.jsonl")
    assert bad.returncode == 2 and "no files match" in bad.stderr and "Traceback" not in bad.stderr


def test_lambada_against_a_corpus_with_planted_passages(shared, tmp_path):
    from icl_eval.contamination.index import index_tasks
    from icl_eval.registry import load_tasks

    passages = [json.loads(line)["text"] for line in (shared / "data" / "lambada" / "lambada_test.jsonl").open()]
    rng = random.Random(10)
    wmt = (shared / "data" / "wmt" / "en-fr" / "newstest2014.en").read_text().splitlines()
    corpus = [" ".join(rng.sample(wmt, 5)) for _ in range(500)]
    planted = sorted(rng.sample(range(len(passages)), 12))
    for k, i in enumerate(planted):
        corpus[k * 40] += " " + passages[i].upper()
    index = index_tasks(load_tasks("lambada"), "13", str(shared / "data"), 1234)
    report = check(index, [str(write_jsonl(tmp_path / "c.jsonl", corpus))], ScanOptions(), workers=1).report
    lam = report["tasks"]["lambada"]
    assert lam["total"] == 5153 and sorted(e["doc_id"] for e in lam["examples"] if e["dirty"]) == planted


def test_run_and_compare_take_a_contamination_report(tiny_checkpoint, tmp_path, capsys):
    from icl_eval.cli import main

    rng = random.Random(11)
    docs = [{"text": words(rng, 15), "answer": "w1"} for _ in range(6)]
    (tmp_path / "planted.yaml").write_text(TASK)
    (tmp_path / "planted.jinja").write_text("{% block input %}{{ text }}{% endblock %}{% block target %}{{ answer }}{% endblock %}")
    (tmp_path / "planted.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    index = build_index([("planted", "input", [(i, d["text"]) for i, d in enumerate(docs)])], "13")
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [docs[2]["text"], docs[5]["text"]])
    report_path = tmp_path / "contamination.json"
    report_path.write_text(json.dumps(check(index, [str(corpus)], ScanOptions(), workers=1).report))

    out = tmp_path / "runs"
    code = main(["run", "--model", str(tiny_checkpoint), "--tasks", "planted", "--include-path", str(tmp_path), "--data-dir", str(tmp_path),
                 "--output", str(out), "--contamination", str(report_path), "--batch-size", "4"])
    assert code == 0
    printed = capsys.readouterr().out
    results_path = Path(printed.strip().splitlines()[-1])
    rows = json.loads((results_path.parent / "contamination_scores.json").read_text())
    samples = [json.loads(line) for line in (results_path.parent / "samples" / "planted_0shot.jsonl").open()]
    ppl = {s["doc_id"]: s["metrics"]["loglikelihood"] for s in samples}  # the perplexity item
    (row,) = [r for r in rows if r["metric"] == "perplexity"]
    assert (row["n_dirty"], row["n_clean"]) == (2, 4)
    assert row["dirty"] == pytest.approx(aggregate("perplexity", [ppl[2], ppl[5]])[0])
    assert row["clean"] == pytest.approx(aggregate("perplexity", [ppl[i] for i in (0, 1, 3, 4)])[0])
    assert "clean vs all" in printed

    assert main(["compare", str(out), "--contamination", str(report_path)]) == 0
    assert "| tiny-gpt2 | planted | 0 | perplexity | 13 |" in capsys.readouterr().out

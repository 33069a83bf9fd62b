"""Contamination: which text a task checks, how corpus documents are named, damaged corpus files, a malformed
report, and pool workers that must not outlive a killed command."""

from __future__ import annotations

import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from icl_eval.contamination.cli import check
from icl_eval.contamination.index import build_index, index_tasks
from icl_eval.contamination.rescore import load_report
from icl_eval.contamination.scan import ScanOptions
from icl_eval.errors import IclEvalError
from icl_eval.registry import load_tasks

REPO = Path(__file__).resolve().parent.parent
FILLER = "the river flows past old stone walls and quiet gardens where children play " * 3

QUESTIONS = [
    ("Who was the man behind The Chipmunks?", ["David Seville"]),
    ("What star sign is Jamie Lee Curtis?", ["Scorpio", "Skorpio"]),
    ("Which Lloyd Webber musical premiered in the US on 10th December 1993?", ["Sunset Blvd", "Sunset Boulevard"]),
    ("In which country is the city of Timbuktu?", ["Mali"]),
]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def triviaqa_data(root: Path) -> Path:
    """The DPR TSV layout the shipped triviaqa.yaml reads (test split and few-shot pool)."""
    (root / "triviaqa").mkdir(parents=True)
    rows = "".join(f"{q}\t{a!r}\r\n" for q, a in QUESTIONS)
    for name in ("topics.dpr.trivia.test.txt", "topics.dpr.trivia.dev.txt"):
        (root / "triviaqa" / name).write_text(rows, encoding="utf-8")
    return root


# --- 1. what a task checks: its document fields, not the template's words ------------------------------------


@pytest.mark.parametrize("ngram", ["13", "gpt3"])
def test_a_short_triviaqa_question_verbatim_in_the_corpus_makes_the_example_dirty(tmp_path, ngram):
    data = triviaqa_data(tmp_path / "data")
    index = index_tasks(load_tasks("triviaqa"), ngram, str(data), 1234)
    # The question alone, inside a longer document, as a quiz site or forum would quote it: no "Q:", no answer.
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": FILLER}, {"text": f"{FILLER} {QUESTIONS[1][0]} {FILLER}"}])
    task = check(index, [str(corpus)], ScanOptions(), workers=1).report["tasks"]["triviaqa"]
    assert task["fields"] == ["question"]
    assert [e["dirty"] for e in task["examples"]] == [False, True, False, False]
    assert task["examples"][1]["matched_whole"]  # 7 words < N: the whole question was found


def test_every_shipped_task_names_its_document_fields():
    from icl_eval.registry import load_tasks as load

    names = [p.stem for p in sorted((REPO / "tasks").glob("*.yaml"))]
    for task in load(",".join(names)):
        assert isinstance(task.contamination_fields, tuple) and task.contamination_fields, task.name


def test_fields_may_be_jinja_expressions_and_lists_are_joined(tmp_path):
    from icl_eval.contamination.index import example_text
    from icl_eval.task_config import parse_task

    raw = {"name": "t", "output_type": "multiple_choice", "template": "t.jinja", "metrics": ["acc"], "data": {"local": "t.jsonl"},
           "choices": "choices", "gold": "gold", "contamination_fields": ["query | replace('Question: ', '', 1)", "choices"]}
    task = parse_task(raw, "t.yaml")
    doc = {"query": "Question: Why is the sky blue?", "choices": ["Rayleigh scattering", "Paint"], "gold": 0}
    assert example_text(task, doc, 0) == "Why is the sky blue?\nRayleigh scattering\nPaint"
    with pytest.raises(IclEvalError, match=r"t.yaml: 'contamination_fields' entry 'answer', doc 3: .*'answer' is undefined.*fields are: choices, gold, query"):
        example_text(parse_task({**raw, "contamination_fields": ["answer"]}, "t.yaml"), doc, 3)
    legacy = parse_task({**raw, "contamination_fields": "input"}, "t.yaml")
    assert legacy.contamination_fields == "input"


def test_the_fields_do_not_change_the_task_config_hash():
    from icl_eval.task_config import parse_task

    raw = {"name": "t", "output_type": "loglikelihood", "template": "t.jinja", "metrics": ["acc"], "data": {"local": "t.jsonl"}}
    assert parse_task(raw, "a.yaml").config_hash() == parse_task({**raw, "contamination_fields": ["q"]}, "a.yaml").config_hash()


# --- 2. document ids: the corpus's own, else file:line --------------------------------------------------------


def _ids(report: dict) -> list[list[str]]:
    return [[d["id"] for d in e["documents"]] for e in report["tasks"]["t"]["examples"]]


def test_documents_are_named_by_their_own_id_field_else_file_and_line(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(3)
    examples = [" ".join(f"w{rng.randrange(10**6)}" for _ in range(20)) for _ in range(4)]
    index = build_index([("t", "both", list(enumerate(examples)))], "13")
    jsonl = write_jsonl(tmp_path / "a.jsonl", [{"text": "x", "id": "skip"}, {"text": examples[0], "id": "doc-17"},
                                               {"text": examples[1], "id": 42}, {"text": examples[2]}])
    parquet = tmp_path / "b.parquet"
    pq.write_table(pa.table({"text": ["y", examples[3]], "id": ["p-1", "p-2"]}), parquet)
    plain = write_jsonl(tmp_path / "c.jsonl", [{"text": "z"}, {"text": examples[3]}])
    report = check(index, [str(jsonl), str(parquet), str(plain)], ScanOptions(), workers=1).report
    assert _ids(report) == [["doc-17"], ["42"], [f"{jsonl}:4"], ["p-2", f"{plain}:2"]]

    # The ids survive the block reader's fallback to line-by-line (a bad line in the block) and batching.
    messy = tmp_path / "d.jsonl"
    messy.write_text('{"text": "q", "id": "m-1"}\nnot json\n' + json.dumps({"text": examples[0], "id": "m-3"}) + "\n")
    report = check(index, [str(messy)], ScanOptions(batch_chars=1), workers=1).report
    assert _ids(report)[0] == ["m-3"]


# --- 4. damaged or unreadable corpus files are skipped and counted, never fatal ------------------------------


def _one_example(tmp_path: Path):
    text = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron"
    good = write_jsonl(tmp_path / "good.jsonl", [{"text": text}])
    return build_index([("t", "both", [(0, text)])], "13"), good


def _scan(index, files: list[Path], **options):
    report = check(index, [str(f) for f in files], ScanOptions(**options), workers=1).report
    return report["tasks"]["t"]["examples"][0]["dirty"], report["skipped_input"]


def test_a_file_that_is_not_zstd_and_a_cut_off_zstd_file_are_counted(tmp_path):
    import zstandard

    index, good = _one_example(tmp_path)
    (tmp_path / "fake.jsonl.zst").write_bytes(b"plain text, not zstd\n" * 5)
    whole = zstandard.ZstdCompressor().compress(("".join(json.dumps({"text": FILLER}) + "\n" for _ in range(200))).encode())
    (tmp_path / "cut.jsonl.zst").write_bytes(whole[: len(whole) // 2])
    dirty, skipped = _scan(index, [tmp_path / "fake.jsonl.zst", tmp_path / "cut.jsonl.zst", good])
    assert dirty and skipped["counts"] == {"corrupt_compressed_data": 2}
    assert any("fake.jsonl.zst:1: corrupt zstd data" in p for p in skipped["first"])
    assert any("cut.jsonl.zst" in p and "truncated file" in p for p in skipped["first"])


def test_a_file_that_is_not_gzip_is_counted(tmp_path):
    index, good = _one_example(tmp_path)
    (tmp_path / "fake.jsonl.gz").write_bytes(b"not gzip at all\n" * 5)
    dirty, skipped = _scan(index, [tmp_path / "fake.jsonl.gz", good])
    assert dirty and skipped["counts"] == {"corrupt_compressed_data": 1} and "fake.jsonl.gz:1: corrupt gzip" in skipped["first"][0]


def test_a_file_that_cannot_be_opened_is_counted(tmp_path, monkeypatch):
    import fsspec

    index, good = _one_example(tmp_path)
    locked = write_jsonl(tmp_path / "locked.jsonl", [{"text": "x"}])
    real_open = fsspec.open

    def refuse(url, *a, **k):  # what a non-root user gets for a file without read permission
        if str(url).endswith("locked.jsonl"):
            raise PermissionError(13, "Permission denied", str(url))
        return real_open(url, *a, **k)

    monkeypatch.setattr(fsspec, "open", refuse)
    dirty, skipped = _scan(index, [locked, good])
    assert dirty and skipped["counts"] == {"unreadable_files": 1}
    assert skipped["first"][0].startswith(f"{locked}: cannot read (PermissionError") and "Permission denied" in skipped["first"][0]


def test_a_damaged_parquet_file_is_counted(tmp_path):
    index, good = _one_example(tmp_path)
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not a parquet file")
    dirty, skipped = _scan(index, [tmp_path / "broken.parquet", good])
    assert dirty and skipped["counts"] == {"unreadable_files": 1} and "broken.parquet: cannot read (ArrowInvalid" in skipped["first"][0]


def test_invalid_utf8_and_non_json_lines_are_counted_with_their_line(tmp_path):
    index, good = _one_example(tmp_path)
    text = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron"
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "caf\xe9"}\nnot json\n' + json.dumps({"text": text}).encode() + b"\n")
    dirty, skipped = _scan(index, [bad])
    assert dirty and skipped["counts"] == {"invalid_utf8_lines": 1, "bad_json_lines": 1}
    assert f"{bad}:1: not valid UTF-8" in skipped["first"][0] and f"{bad}:2: not valid JSON" in skipped["first"][1]
    # a text file: the line is kept with U+FFFD for the bad bytes (its valid words can still match), and counted
    txt = tmp_path / "bad.txt"
    txt.write_bytes(b"\xff " + text.encode() + b"\n")
    dirty, skipped = _scan(index, [txt])
    assert dirty and skipped["counts"] == {"invalid_utf8_lines": 1} and f"{txt}:1: not valid UTF-8" in skipped["first"][0]


def test_the_command_names_skipped_files_and_still_writes_the_report(tmp_path):
    (tmp_path / "q.yaml").write_text("name: q\noutput_type: loglikelihood\ntemplate: q.jinja\nmetrics: [acc]\n"
                                     "contamination_fields: [question]\ndata:\n  local: q.jsonl\n")
    (tmp_path / "q.jinja").write_text("{% block input %}Q: {{ question }}{% endblock %}{% block target %}{{ answer }}{% endblock %}")
    write_jsonl(tmp_path / "q.jsonl", [{"question": "who painted the ceiling of the sistine chapel", "answer": "Michelangelo"}])
    (tmp_path / "c1.jsonl.gz").write_bytes(b"not gzip\n")
    (tmp_path / "c2.parquet").write_bytes(b"PAR1 nope")
    (tmp_path / "c3.jsonl").write_bytes(b'{"text": "\xff"}\n' + json.dumps({"text": "so who painted the ceiling of the sistine chapel then"}).encode() + b"\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "icl_eval", "contamination", "--tasks", str(tmp_path / "q.yaml"), "--data-dir", str(tmp_path),
           "--corpus", str(tmp_path / "c*"), "--output", str(out), "--no-cache", "--workers", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "skipped input: 1 corrupt compressed data, 1 invalid utf8 lines, 1 unreadable files" in done.stderr
    for where in (f"{tmp_path / 'c1.jsonl.gz'}:1", f"{tmp_path / 'c2.parquet'}: cannot read", f"{tmp_path / 'c3.jsonl'}:1: not valid UTF-8"):
        assert where in done.stderr
    report = json.loads((out / "contamination.json").read_text())
    assert report["tasks"]["q"]["dirty"] == 1 and sum(report["skipped_input"]["counts"].values()) == 3


# --- 3. pool workers exit when the command is killed ---------------------------------------------------------


def test_scan_workers_die_with_a_killed_command(tmp_path):
    psutil = pytest.importorskip("psutil")
    (tmp_path / "q.yaml").write_text("name: q\noutput_type: loglikelihood\ntemplate: q.jinja\nmetrics: [acc]\n"
                                     "contamination_fields: [question]\ndata:\n  local: q.jsonl\n")
    (tmp_path / "q.jinja").write_text("{% block input %}{{ question }}{% endblock %}{% block target %}{{ answer }}{% endblock %}")
    write_jsonl(tmp_path / "q.jsonl", [{"question": "a b c d e f g h i j k l m n", "answer": "x"}])
    for name in ("a.jsonl", "b.jsonl"):  # named pipes nobody writes to: each worker blocks reading its shard, as on a slow disk
        os.mkfifo(tmp_path / name)
    cmd = [sys.executable, "-m", "icl_eval", "contamination", "--tasks", str(tmp_path / "q.yaml"), "--data-dir", str(tmp_path),
           "--corpus", str(tmp_path / "*.jsonl"), "--corpus", str(tmp_path / "q.jsonl"), "--output", str(tmp_path / "out"),
           "--no-cache", "--workers", "2"]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: list = []
    try:
        deadline = time.monotonic() + 60
        while len(children) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
            children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 2, "the scan never started its two workers"
        time.sleep(1.0)  # past the worker initializer
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        _, alive = psutil.wait_procs(children, timeout=5)
        assert not alive, f"workers outlived the killed command: {[p.pid for p in alive]}"
    finally:
        for p in children:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        if proc.poll() is None:
            proc.kill()


# --- 6. a malformed report is refused when it is read, naming the file and the field --------------------------


GOOD_REPORT = {"report_version": 2, "tasks": {"lambada": {"n": 13, "examples": [{"doc_id": 0, "dirty": True}, {"doc_id": 1, "dirty": False}]}}}


def _broken(report: dict, change) -> dict:
    copy = json.loads(json.dumps(report))
    change(copy)
    return copy


@pytest.mark.parametrize("content,needles", [
    (json.dumps(GOOD_REPORT)[:40], ("not a JSON report", "cut short")),
    ("[1, 2]", ("top level must be a JSON object, got list",)),
    (json.dumps({"scan": {}}), ("missing field 'tasks'",)),
    (json.dumps({"tasks": []}), ("'tasks' must be an object",)),
    (json.dumps(_broken(GOOD_REPORT, lambda r: r["tasks"].update(lambada=5))), ("'tasks.lambada' must be an object, got int",)),
    (json.dumps(_broken(GOOD_REPORT, lambda r: r["tasks"]["lambada"].pop("examples"))), ("'tasks.lambada' has no field 'examples'",)),
    (json.dumps(_broken(GOOD_REPORT, lambda r: r["tasks"]["lambada"].update(n="13"))), ("'tasks.lambada.n' must be a positive integer, got '13'",)),
    (json.dumps(_broken(GOOD_REPORT, lambda r: r["tasks"]["lambada"].update(examples={}))), ("'tasks.lambada.examples' must be a list",)),
    (json.dumps(_broken(GOOD_REPORT, lambda r: r["tasks"]["lambada"]["examples"][1].pop("dirty"))), ("'tasks.lambada.examples[1]' has no field 'dirty'",)),
    (json.dumps(_broken(GOOD_REPORT, lambda r: r["tasks"]["lambada"]["examples"][1].update(dirty="no"))), ("'tasks.lambada.examples[1].dirty' must be true or false, got 'no'",)),
    (json.dumps(_broken(GOOD_REPORT, lambda r: r["tasks"]["lambada"]["examples"][0].update(doc_id=[0]))), ("'tasks.lambada.examples[0].doc_id' must be an integer or string",)),
    (json.dumps(_broken(GOOD_REPORT, lambda r: r["tasks"]["lambada"]["examples"].append(None))), ("'tasks.lambada.examples[2]' must be an object, got NoneType",)),
    (json.dumps(_broken(GOOD_REPORT, lambda r: r.update(report_version=99))), ("'report_version' 99",)),
], ids=["truncated", "list", "no-tasks", "tasks-list", "task-int", "no-examples", "n-string", "examples-dict", "no-dirty", "dirty-string", "doc-id-list", "example-null", "future-version"])
def test_a_malformed_report_is_refused_naming_the_file_and_field(tmp_path, content, needles):
    path = tmp_path / "contamination.json"
    path.write_text(content)
    with pytest.raises(IclEvalError) as e:
        load_report(path)
    assert str(path) in str(e.value)
    for needle in needles:
        assert needle in str(e.value)


def test_a_well_formed_report_of_either_version_loads(tmp_path):
    for version in (1, 2):
        path = tmp_path / f"v{version}.json"
        path.write_text(json.dumps({**GOOD_REPORT, "report_version": version}))
        assert load_report(path)["tasks"]["lambada"]["n"] == 13

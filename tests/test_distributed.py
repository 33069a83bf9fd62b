"""Data parallelism: 2 CPU processes (gloo) give the same results as one; shards keep shared contexts together."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from icl_eval.cli import main
from icl_eval.distributed import DataParallel, shard

REPO = Path(__file__).resolve().parent.parent


def test_shards_cover_everything_once_and_keep_contexts_together():
    keys = ["a", "a", "b", "c", "a", "d", "b", "e"]
    weights = [5, 5, 9, 1, 5, 2, 9, 3]
    parts = [shard(keys, weights, r, 3) for r in range(3)]
    assert sorted(i for p in parts for i in p) == list(range(len(keys)))
    for p in parts:
        for i in p:
            assert all(j in p for j in range(len(keys)) if keys[j] == keys[i])
    assert parts == [shard(keys, weights, r, 3) for r in range(3)]  # every process computes the same split
    assert shard(keys, weights, 0, 1) == list(range(len(keys)))


def test_data_parallel_adds_its_processes_to_the_settings_and_shards_documents_whole(monkeypatch):
    from icl_eval.requests import RollingRequest, RollingResult

    class Inner:
        def settings(self):
            return {"batch_size": 2}

        def loglikelihood_rolling(self, requests, progress=None, on_result=None):
            return [RollingResult(-float(len(r.text)), len(r.text), 1, len(r.text)) for r in requests]

    def gather(out, mine):  # what the other of two ranks would send: the documents rank 0 did not take
        rest = [i for i in range(len(docs)) if i not in mine[0]]
        out[:] = [mine, (rest, [RollingResult(-float(len(docs[i].text)), len(docs[i].text), 1, len(docs[i].text)) for i in rest])]

    import torch

    monkeypatch.setattr(torch.distributed, "all_gather_object", gather)
    docs = [RollingRequest("a" * n) for n in (5, 40, 7, 3)]
    model = DataParallel(Inner(), 0, 2)
    assert model.settings() == {"batch_size": 2, "processes": 2}
    out = model.loglikelihood_rolling(docs)
    assert [r.n_tokens for r in out] == [5, 40, 7, 3]


def samples_of(run_dir: Path) -> dict[str, list[dict]]:
    return {p.name: [json.loads(x) for x in p.read_text().splitlines()] for p in sorted((run_dir / "samples").iterdir())}


def test_two_processes_equal_one(tiny_checkpoint, tmp_path, capsys):
    argv = ["run", "--model", str(tiny_checkpoint), "--tasks", "arithmetic_2da", "--shots", "0,3", "--limit", "8", "--batch-size", "4"]
    assert main(argv + ["--output", str(tmp_path / "one")]) == 0
    one = Path(capsys.readouterr().out.strip().splitlines()[-1]).parent

    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "icl_eval", *argv, "--output", str(tmp_path / "two")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [d for d in (tmp_path / "two").iterdir() if not d.name.startswith(".")]
    assert len(runs) == 1, "only the first process writes a run folder"
    # Each process stored its own shard in the one response cache: together, every request (8 docs x 2 shot counts).
    with sqlite3.connect(tmp_path / "two" / ".cache" / "responses.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 16
    two = runs[0]
    assert "2 data-parallel processes" in proc.stdout

    res_one, res_two = (json.loads((d / "results.json").read_text()) for d in (one, two))
    assert res_two["settings"]["processes"] == 2 and res_one["settings"]["processes"] == 1
    for a, b in zip(res_one["records"], res_two["records"], strict=True):
        assert (a["task"], a["shots"], a["metric"], a["n"]) == (b["task"], b["shots"], b["metric"], b["n"])
        assert abs(a["value"] - b["value"]) < 1e-9
    s1, s2 = samples_of(one), samples_of(two)
    assert s1.keys() == s2.keys()
    for name in s1:
        for x, y in zip(s1[name], s2[name], strict=True):
            assert (x["doc_id"], x["fewshot_ids"], x["prompt_hash"], x["is_greedy"]) == (y["doc_id"], y["fewshot_ids"], y["prompt_hash"], y["is_greedy"])
            assert abs(x["loglikelihood"] - y["loglikelihood"]) < 1e-4

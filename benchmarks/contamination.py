"""Contamination scan throughput: MB/s per core for the local engine and for Dask with 1 and 2 workers.

Builds a synthetic corpus (~200 MB of JSON lines by default) in a temporary folder from real text beside the
checkout (WMT news sentences in four languages and English word lists, reshuffled into documents), plants
LAMBADA passages in it (verbatim and lightly edited), indexes the LAMBADA task, and scans the corpus with each
engine. It checks that every planted passage is found and that all engines agree, and it times a plain
Python loop over strings on part of the corpus for comparison.

    PYTHONPATH=. python benchmarks/contamination.py [--mb 200] [--shards 16] [--keep DIR]

Figures on a shared machine are noisy: every scan runs --repeat times, interleaved with the others, and the
best is shown; compare numbers from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from icl_eval.contamination.cli import check  # noqa: E402
from icl_eval.contamination.engines import local_cluster  # noqa: E402
from icl_eval.contamination.index import index_tasks  # noqa: E402
from icl_eval.contamination.scan import ScanOptions  # noqa: E402
from icl_eval.registry import load_tasks  # noqa: E402


def shared_data() -> Path:
    root = Path(os.environ.get("ICL_EVAL_SHARED", REPO.parent / "shared")) / "data"
    if not root.is_dir():
        sys.exit(f"needs the shared data folder ({root}); set ICL_EVAL_SHARED")
    return root


def build_corpus(data: Path, out: Path, total_mb: int, shards: int, seed: int) -> tuple[list[int], int]:
    """Write shards of JSON lines; returns the LAMBADA doc ids planted and the corpus size in bytes."""
    rng = random.Random(seed)
    sentences = [line.strip() for f in sorted((data / "wmt").glob("*/newstest*")) for line in f.open(encoding="utf-8") if line.strip()]
    vocab = [w.strip() for f in ("google-10000-english.txt", "20k.txt") for w in (data / "wordlist" / f).open()]
    passages = [json.loads(line)["text"] for line in (data / "lambada" / "lambada_test.jsonl").open()]
    planted = sorted(rng.sample(range(len(passages)), 200))
    plants = {}
    for k, i in enumerate(planted):
        text = passages[i]
        if k % 2:  # lightly edited: case, punctuation and one word changed in the middle
            words = text.upper().replace(",", " ,").split()
            words[len(words) // 2] = "EDITED"
            text = " ".join(words)
        plants[k] = text
    target = total_mb * 1_000_000
    per_shard = target // shards
    written = 0
    docs_total = int(target / 1500)
    plant_at = {d: k for k, d in zip(plants, rng.sample(range(docs_total), len(plants)))}
    doc = 0
    for s in range(shards):
        size = 0
        lines = []
        while size < per_shard:
            if rng.random() < 0.7:
                text = " ".join(rng.choices(sentences, k=rng.randint(3, 15)))
            else:  # word salad from the frequency lists: plenty of common short n-grams
                text = " ".join(rng.choices(vocab, k=rng.randint(100, 400))) + "."
            if doc in plant_at:
                text += " " + plants[plant_at[doc]] + " " + rng.choice(sentences)
            line = json.dumps({"id": doc, "text": text}, ensure_ascii=False) + "\n"
            lines.append(line)
            size += len(line.encode("utf-8"))
            doc += 1
        (out / f"shard-{s:03d}.jsonl").write_text("".join(lines), encoding="utf-8")
        written += size
    missing = [planted[k] for d, k in plant_at.items() if d >= doc]
    return sorted(set(planted) - set(missing)), written


_PUNCT = re.compile(r"[^\w\s]|_")


def python_loop(paths: list[Path], grams: set[str], n: int, limit_bytes: int) -> tuple[float, int, int]:
    """The obvious pure-Python scan: normalise each line, slide a window of words, look up the joined n-gram."""
    start, read, hits = time.perf_counter(), 0, 0
    for path in paths:
        with path.open(encoding="utf-8") as f:
            for line in f:
                read += len(line)
                words = _PUNCT.sub("", json.loads(line)["text"].lower()).split()
                hits += sum(" ".join(words[i:i + n]) in grams for i in range(len(words) - n + 1))
                if read >= limit_bytes:
                    return time.perf_counter() - start, read, hits
    return time.perf_counter() - start, read, hits


def parse_spec(spec: str) -> tuple[str, int]:
    """"dask2" -> ("dask", 2)."""
    engine = spec.rstrip("0123456789")
    return engine, int(spec[len(engine):])


def timed_scan(index, corpus: list[str], spec: str):
    """One scan with the engine `spec` names (local1, dask2, ...); a Dask cluster is started outside the timing."""
    engine, workers = parse_spec(spec)
    cluster = scheduler = None
    if engine == "dask":
        cluster = local_cluster(workers)
        scheduler = cluster.scheduler_address
    try:
        return check(index, corpus, ScanOptions(), engine=engine, workers=workers, scheduler=scheduler)
    finally:
        if cluster is not None:
            cluster.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=200, help="corpus size in MB (default 200)")
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", default=None, help="build the corpus here and keep it (default: a temporary folder)")
    ap.add_argument("--engines", default="local1,local2,dask1,dask2", help="which scans to time")
    ap.add_argument("--repeat", type=int, default=3, help="scans per engine, interleaved; the best is shown (default 3)")
    ap.add_argument("--baseline-mb", type=int, default=10, help="MB the Python-loop baseline reads (default 10)")
    args = ap.parse_args()

    data = shared_data()
    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="icl-contam-bench-")
    out = Path(args.keep or tmp.name)
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    planted, size = build_corpus(data, out, args.mb, args.shards, args.seed)
    mb = size / 1e6
    print(f"corpus: {mb:.0f} MB in {args.shards} JSON-lines shards at {out} ({time.perf_counter() - t:.0f} s to build), {len(planted)} LAMBADA passages planted")
    t = time.perf_counter()
    index = index_tasks(load_tasks("lambada"), "13", str(data), 1234)
    print(f"eval index: lambada, {len(index.table.texts):,} distinct 13-grams, built in {time.perf_counter() - t:.1f} s")
    corpus = [str(out / "shard-*.jsonl")]
    cores = os.cpu_count() or 1
    print(f"machine: {cores} CPU cores (shared with other work: figures are noisy)\n")

    specs = args.engines.split(",")
    runs: dict[str, list] = {spec: [] for spec in specs}
    reports = {}
    for _ in range(args.repeat):  # interleaved, so a burst of load on the machine hits every engine alike
        for spec in specs:
            outcome = timed_scan(index, corpus, spec)
            reports[spec] = outcome.report["tasks"]
            runs[spec].append((outcome.seconds, outcome.report["scan"]["cpu_seconds"]))
    rows = []
    for spec in specs:
        _, workers = parse_spec(spec)
        dirty = sorted(e["doc_id"] for e in reports[spec]["lambada"]["examples"] if e["dirty"])
        found = len(set(planted) & set(dirty))
        seconds = min(wall for wall, _ in runs[spec])
        cpu = min(c for _, c in runs[spec])
        rate = mb / seconds
        rows.append((spec, workers, seconds, rate, rate / workers, mb / cpu, f"{found}/{len(planted)}", len(dirty)))

    base_s = base_cpu = float("inf")
    for _ in range(args.repeat):
        cpu0 = time.process_time()
        wall, base_read, _ = python_loop(sorted(out.glob("shard-*.jsonl")), set(), 13, args.baseline_mb * 1_000_000)
        base_s, base_cpu = min(base_s, wall), min(base_cpu, time.process_time() - cpu0)
    base_mb = base_read / 1e6
    base_rate = base_mb / base_s
    print(f"best of {args.repeat} scans each. MB/s: corpus MB over wall time; per core: over wall time x workers; per CPU-s: over the CPU time the scan used;")
    print("x loop: per core over the Python loop's MB/s, timed in the same run")
    print(f"{'scan':<8} {'workers':>7} {'wall s':>7} {'MB/s':>7} {'per core':>8} {'per CPU-s':>9} {'x loop':>6} {'planted found':>13} {'dirty':>6}")
    for spec, workers, secs, rate, per_core, per_cpu, found, n_dirty in rows:
        print(f"{spec:<8} {workers:>7} {secs:>7.1f} {rate:>7.1f} {per_core:>8.1f} {per_cpu:>9.1f} {per_core / base_rate:>6.1f} {found:>13} {n_dirty:>6}")
    print(f"{'python':<8} {1:>7} {base_s:>7.1f} {base_rate:>7.1f} {base_rate:>8.1f} {base_mb / base_cpu:>9.1f} {1:>6.1f}   (plain loop over strings, first {base_mb:.0f} MB)")
    first = next(iter(reports.values()))
    print("all engines agree: " + ("yes" if all(r == first for r in reports.values()) else "NO"))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()

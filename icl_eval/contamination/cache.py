"""The scan cache: merged scan results as JSON, keyed by everything that can change them.

The key covers the corpus files' fingerprints, the normalisation version, the n-gram lengths, the eval set's
hash (its grams' sorted hashes), the boilerplate threshold and the text field. JSON only: reading a cache entry
must never run code.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from icl_eval.contamination.corpus import Problems, Shard
from icl_eval.contamination.index import GramTable
from icl_eval.contamination.normalise import NORMALISATION_VERSION
from icl_eval.contamination.scan import ScanOptions
from icl_eval.results import atomic_write


def default_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "icl_eval" / "contamination"


def scan_key(shards: list[Shard], table: GramTable, options: ScanOptions) -> str:
    payload = {
        "files": [[s.url, s.fingerprint] for s in shards],
        "normalisation_version": NORMALISATION_VERSION,
        "lengths": list(table.lengths),
        "eval_set": table.fingerprint(),
        "boilerplate": options.boilerplate,
        "text_field": options.text_field,
        "doc_ids": "own id, else file:line",  # how hits name documents (file:line only, before)
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def load(cache_dir: Path, key: str, table: GramTable) -> tuple[dict[int, list], Problems, dict] | None:
    path = cache_dir / f"{key}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None  # absent or damaged: scan again
    gid = {t: i for i, t in enumerate(table.texts)}
    try:
        refs = {gid[text]: r for text, r in data["hits"].items()}
        return refs, Problems(data["problems"]["counts"], data["problems"]["examples"]), data["totals"]
    except (KeyError, TypeError):
        return None


def save(cache_dir: Path, key: str, table: GramTable, refs: dict[int, list], problems: Problems, totals: dict) -> Path:
    path = cache_dir / f"{key}.json"
    data = {
        "key": key,
        "hits": {table.texts[g]: r for g, r in sorted(refs.items())},
        "problems": {"counts": problems.counts, "examples": problems.examples},
        "totals": totals,
    }
    atomic_write(path, json.dumps(data, ensure_ascii=False))
    return path

"""data.format text: the whole file is one document {"text": ...} (a corpus scored as one text, e.g. PTB's test set)."""

from __future__ import annotations

import gzip
from pathlib import Path

from icl_eval.data import load_source
from icl_eval.task_config import parse_task


def _source(local: str, fmt: str | None = None):
    data = {"local": local, **({"format": fmt} if fmt else {})}
    raw = {"name": "ptb", "output_type": "loglikelihood", "template": "t.jinja", "metrics": ["perplexity"], "data": data}
    return parse_task(raw, "ptb.yaml", ".").data


def test_a_text_file_is_one_document_with_its_line_ends(tmp_path: Path) -> None:
    text = " no it was n't black monday \n but while the new york stock exchange did n't fall \n"
    (tmp_path / "ptb.test.txt").write_text(text, encoding="utf-8")
    docs, where = load_source(_source("ptb.test.txt"), str(tmp_path), 1234, "task 'ptb'")
    assert docs == [{"text": text}] and where == str(tmp_path / "ptb.test.txt")
    (tmp_path / "corpus.raw.gz").write_bytes(gzip.compress(text.encode()))
    assert load_source(_source("corpus.raw.gz", "text"), str(tmp_path), 1234, "task 'ptb'")[0] == [{"text": text}]

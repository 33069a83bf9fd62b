"""The GPT-3 paper's results (Brown et al. 2020, Table H.1) as reference numbers for icl-eval's tasks.

Pure functions over the shipped CSV (gpt3_table_h1.csv; PROVENANCE.md says where each number comes from).
Paper values stay in the paper's units (accuracy, F1 and exact match in %, BLEU 0..100, perplexity);
`to_icl_scale` converts one to the scale icl-eval reports for the matching metric.
"""

from __future__ import annotations

import csv
import functools
import math
from dataclasses import dataclass
from importlib import resources

TABLE = "Table H.1"
SETTINGS = ("zero", "one", "few")


@dataclass(frozen=True)
class Row:
    task: str  # the icl-eval task
    paper_task: str  # the row name in Table H.1
    metric: str  # as printed in the paper: acc, ppl, BLEU-sb, BLEU-mb, f1, f1a, em
    split: str
    k_fewshot: int | None  # the paper's K for this task's few-shot setting
    setting: str  # zero | one | few
    params: int  # nominal size (Table 2.1)
    model_name: str  # GPT-3 Small ... GPT-3 175B
    value: float
    text: str  # the number as printed ("0.70", "100.0")
    source_table: str
    crosscheck: str

    @property
    def shots(self) -> int | None:
        """The K this number was measured at."""
        return {"zero": 0, "one": 1}.get(self.setting, self.k_fewshot)

    @property
    def size(self) -> str:
        """e.g. '125M (GPT-3 Small)', '175B (GPT-3 175B)'."""
        return f"{_short(self.params)} ({self.model_name})"

    @property
    def shown(self) -> str:
        """The paper's value as printed, with its unit: '42.7%', '18.6' (perplexity), '21.9' (BLEU)."""
        return self.text + ("%" if PAPER_UNITS.get(self.metric) == "%" else "")


@dataclass(frozen=True)
class MetricMap:
    """How an icl-eval metric lines up with the paper's: the paper metric names that measure it (first found
    wins), and the factor taking a paper value to icl-eval's scale."""

    paper: tuple[str, ...]
    scale: float


# icl-eval metric -> the paper's. Accuracy-like metrics are fractions in icl-eval and percentages in the paper.
# Every accuracy variant maps to the paper's one accuracy: the paper reports a single number per task, scored with
# the normalisation it chose for that task (Section 2.4). icl-eval's exact_match is the paper's "acc" on the
# closed-book QA and scramble tasks and its "em" on SQuADv2. bleu is sacrebleu's, as the paper's BLEU-sb.
METRIC_MAP: dict[str, MetricMap] = {
    "acc": MetricMap(("acc",), 0.01),
    "acc_norm": MetricMap(("acc",), 0.01),
    "acc_norm_token": MetricMap(("acc",), 0.01),
    "acc_uncond": MetricMap(("acc",), 0.01),
    "exact_match": MetricMap(("acc", "em"), 0.01),
    "f1": MetricMap(("f1",), 0.01),
    "bleu": MetricMap(("BLEU-sb",), 1.0),
    "perplexity": MetricMap(("ppl",), 1.0),
}
PAPER_UNITS = {"acc": "%", "em": "%", "f1": "%", "f1a": "%", "BLEU-sb": "", "BLEU-mb": "", "ppl": ""}

# icl-eval tasks that are a variant of a paper task: the paper's LAMBADA row covers both formats (its few-shot
# numbers were measured in the fill-in-the-blank format, lambada_cloze).
TASK_ALIASES = {"lambada_cloze": "lambada"}


def _short(params: int) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M")):
        if params >= div:
            return f"{params / div:.3g}{unit}"
    return str(params)


def _int_or_none(text: str) -> int | None:
    return int(float(text)) if text.strip() else None


@functools.lru_cache(maxsize=1)
def load_table() -> tuple[Row, ...]:
    """Every row of the shipped table (read once)."""
    with resources.files(__package__).joinpath("gpt3_table_h1.csv").open(encoding="utf-8", newline="") as f:
        return tuple(
            Row(r["icl_eval_task"], r["task"], r["metric"], r["split"], _int_or_none(r["k_fewshot"]), r["setting"], int(r["params"]),
                r["model_name"], float(r["value"]), r["value"], r["source_table"], r["crosscheck"])
            for r in csv.DictReader(f)
        )


def paper_metrics(task: str, metric: str) -> list[str]:
    """The paper metric(s) a name means for this task: itself when the paper uses that name, else the mapped one."""
    task = TASK_ALIASES.get(task, task)
    have = {r.metric for r in load_table() if r.task == task}
    if metric in have:
        return [metric]
    mapped = METRIC_MAP.get(metric)
    return [next(m for m in mapped.paper if m in have)] if mapped and any(m in have for m in mapped.paper) else []


def gpt3_rows(task: str, metric: str | None = None) -> list[Row]:
    """The paper's rows for an icl-eval task, optionally for one metric (icl-eval's name, e.g. exact_match, or the
    paper's, e.g. BLEU-mb); sorted by setting, then size. Empty when the paper has no such number."""
    name = TASK_ALIASES.get(task, task)
    wanted = None if metric is None else set(paper_metrics(task, metric))
    rows = [r for r in load_table() if r.task == name and (wanted is None or r.metric in wanted)]
    return sorted(rows, key=lambda r: (r.metric, SETTINGS.index(r.setting), r.params))


def setting_for(shots: int | str) -> str:
    """zero | one | few from a K (0, 1, K > 1) or a setting name. Any K > 1 maps to the paper's few-shot number,
    measured at the paper's own K: callers label it with that K (Row.k_fewshot)."""
    if isinstance(shots, str):
        if shots not in SETTINGS:
            raise ValueError(f"setting {shots!r}: use one of {', '.join(SETTINGS)} or a number of shots")
        return shots
    return "zero" if shots == 0 else "one" if shots == 1 else "few"


def nearest(task: str, metric: str, shots_setting: int | str, num_parameters: int) -> Row | None:
    """The paper's number at the GPT-3 size nearest `num_parameters` on a log scale (a 1B model is nearer 1.3B
    than 760M), or None when the paper has none for this task, metric and setting."""
    setting = setting_for(shots_setting)
    rows = [r for r in gpt3_rows(task, metric) if r.setting == setting]
    if not rows or num_parameters <= 0:
        return None
    # Ties (exactly between two sizes) go to the smaller size: the first in the sorted rows.
    return min(rows, key=lambda r: abs(math.log(r.params) - math.log(num_parameters)))


def to_icl_scale(row: Row, metric: str) -> float:
    """A paper value on icl-eval's scale for `metric` (acc 42.7 -> 0.427; BLEU and perplexity unchanged)."""
    mapped = METRIC_MAP.get(metric)
    if mapped is not None:
        return row.value * mapped.scale
    return row.value * (0.01 if PAPER_UNITS.get(row.metric) == "%" else 1.0)


def shots_label(row: Row, shots: int) -> str:
    """'' when the paper measured at this K; else which K it was (its few-shot K differs from the run's)."""
    return "" if row.shots == shots else f"paper's few-shot K={row.k_fewshot}"

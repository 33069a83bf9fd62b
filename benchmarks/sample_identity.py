"""Per-example sample logs of a fixed set of runs, made at one commit and compared with those of another.

A refactor that must not change a single number is checked by running this script at the old and the new
commit and comparing the two folders:

    python benchmarks/sample_identity.py run /tmp/before        # at the old commit
    python benchmarks/sample_identity.py run /tmp/after         # at the new commit
    python benchmarks/sample_identity.py compare /tmp/before /tmp/after

`compare` reads every samples file of the first folder and requires the same file, the same examples in the
same order and the same value for every field the old file has; fields only the new file has are listed, not
failed (a redesign may add fields). The runs: a tiny random GPT-2 on the real GPT-2 vocabulary (seeded, so both
commits build the same weights), tasks of every output type at 0 and 3 shots, with the response cache off, on
(computed, then read back) and in two data-parallel processes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("ICL_EVAL_SHARED", REPO.parent / "shared"))
TASKS = "arithmetic_2da,lambada,hellaswag,arc_easy,winogrande,triviaqa,wmt16_de_en"
SHOTS = "0,3"
LIMIT = "6"
# (variant, extra arguments, processes)
VARIANTS = (
    ("no-cache", ["--no-cache"], 1),
    ("cache-computed", [], 1),
    ("cache-reused", [], 1),  # the same output folder as cache-computed: every response read back
    ("two-processes", ["--no-cache"], 2),
)


def _icl_eval(argv: list[str], processes: int) -> None:
    launcher = [sys.executable, "-m", "icl_eval"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), "-m", "icl_eval"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([*launcher, *argv], cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"icl-eval {' '.join(argv)} failed:\n{proc.stderr[-3000:]}")


def run(out: Path) -> None:
    from icl_eval.models.tiny import save_tiny_checkpoint

    if not (SHARED / "data").is_dir():
        raise SystemExit(f"{SHARED}/data not found: set ICL_EVAL_SHARED to the shared data folder")
    out.mkdir(parents=True, exist_ok=True)
    ckpt = save_tiny_checkpoint(out / "tiny-gpt2", seed=0, n_positions=1024, tokenizer_dir=SHARED / "tokenizers" / "gpt2")
    for variant, extra, processes in VARIANTS:
        folder = out / ("cache-computed" if variant == "cache-reused" else variant)
        argv = ["run", "--model", str(ckpt), "--tasks", TASKS, "--shots", SHOTS, "--limit", LIMIT, "--batch-size", "4",
                "--data-dir", str(SHARED / "data"), "--output", str(folder), *extra]
        _icl_eval(argv, processes)
        if variant == "cache-computed":  # keep this run's samples apart: the reused run writes a second run folder
            (folder / "first").write_text(_newest_run(folder).name)
        print(f"{variant}: {folder}")


def _newest_run(folder: Path) -> Path:
    return max((p for p in folder.iterdir() if (p / "results.json").exists()), key=lambda p: p.stat().st_mtime_ns)


def _sample_files(folder: Path) -> dict[str, Path]:
    """Per variant, its run's samples by file name; cache-computed and cache-reused are the two runs in one folder."""
    files = {}
    for variant, _, _ in VARIANTS:
        if variant == "cache-reused":
            sub = folder / "cache-computed"
            first = (sub / "first").read_text()
            runs = [p for p in sub.iterdir() if (p / "results.json").exists() and p.name != first]
        else:
            sub = folder / variant
            runs = [p for p in sub.iterdir() if (p / "results.json").exists()]
            if variant == "cache-computed":
                runs = [sub / (sub / "first").read_text()]
        if len(runs) != 1:
            raise SystemExit(f"{sub}: expected one run folder for {variant}, found {len(runs)}")
        for f in sorted((runs[0] / "samples").glob("*.jsonl")):
            files[f"{variant}/{f.name}"] = f
    return files


def compare(before: Path, after: Path) -> int:
    old, new = _sample_files(before), _sample_files(after)
    problems, added, examples = [], set(), 0
    for name, path in old.items():
        if name not in new:
            problems.append(f"{name}: missing after")
            continue
        a = [json.loads(line) for line in path.read_text().splitlines()]
        b = [json.loads(line) for line in new[name].read_text().splitlines()]
        if len(a) != len(b):
            problems.append(f"{name}: {len(a)} examples before, {len(b)} after")
            continue
        for x, y in zip(a, b):
            examples += 1
            added |= {f"{name.split('/')[1]}:{k}" for k in y.keys() - x.keys()}
            for key, value in x.items():
                if key not in y:
                    problems.append(f"{name} doc {x.get('doc_id')}: field '{key}' missing after")
                elif not _same(value, y[key]):
                    problems.append(f"{name} doc {x.get('doc_id')}: '{key}' {value!r} before, {y[key]!r} after")
    for line in problems[:40]:
        print(line)
    print(f"{len(old)} sample files, {examples} examples compared; fields added after: {sorted({a.split(':')[1] for a in added}) or 'none'}")
    print("IDENTICAL" if not problems else f"DIFFERENT: {len(problems)} differences")
    return 0 if not problems else 1


def _same(old, new) -> bool:
    """Old values must be unchanged; inside dicts (a candidate's fields), keys the new file adds are allowed."""
    if isinstance(old, dict) and isinstance(new, dict):
        return all(k in new and _same(v, new[k]) for k, v in old.items())
    if isinstance(old, list) and isinstance(new, list):
        return len(old) == len(new) and all(_same(a, b) for a, b in zip(old, new))
    return old == new


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("run").add_argument("out", type=Path)
    c = sub.add_parser("compare")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    args = p.parse_args()
    if args.command == "run":
        run(args.out)
        return 0
    return compare(args.before, args.after)


if __name__ == "__main__":
    sys.exit(main())

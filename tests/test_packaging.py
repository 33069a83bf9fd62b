"""A non-editable install must carry tasks/ and prompts/ inside the package."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_wheel_ships_tasks_and_prompts(tmp_path):
    pytest.importorskip("hatchling")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist")],
        capture_output=True, text=True,
    )
    assert build.returncode == 0, build.stderr
    wheel = next((tmp_path / "dist").glob("icl_eval-*.whl"))
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # Run from an unrelated folder with only the unpacked wheel on the path: no source checkout to fall back on.
    probe = "from icl_eval.registry import discover, builtin_dir; t = discover(); print(len(t), builtin_dir('prompts'))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": ""})
    assert out.returncode == 0, out.stderr
    n, prompts = out.stdout.split()
    assert int(n) >= 12 and Path(prompts).is_relative_to(site)
    # The GPT-3 paper's table (package data) and the task groups (tasks/groups/) ship too.
    probe = "from icl_eval.paper import gpt3_rows; from icl_eval.registry import catalogue; import icl_eval.paper as p; print(len(gpt3_rows('lambada', 'acc')), len(catalogue()[1]), p.__file__)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": ""})
    assert out.returncode == 0, out.stderr
    rows, groups, module = out.stdout.split()
    assert int(rows) == 24 and int(groups) >= 7 and Path(module).is_relative_to(site)

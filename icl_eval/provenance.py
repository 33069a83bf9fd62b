"""What produced a run, recorded in results.json: library versions, Python, icl-eval's git commit, the command."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

# The libraries whose versions can move a score: the model code, data loading, device placement, BLEU.
LIBRARIES = ("torch", "transformers", "tokenizers", "datasets", "accelerate", "sacrebleu")
PACKAGE_DIR = Path(__file__).resolve().parent


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str | None]:
    """Installed versions from package metadata (nothing is imported); None for a library not installed."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _git(folder: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None  # no git, or it hung: the commit is a nicety, never a reason to fail a run
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(package_dir: Path = PACKAGE_DIR) -> dict[str, Any] | None:
    """The commit icl-eval runs from and whether tracked files differ from it; None outside a checkout.

    Only when the package folder is the checkout's own icl_eval/: a wheel installed into a virtual environment
    inside some other repository must not report that repository's commit."""
    top = _git(package_dir, "rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() / package_dir.name != package_dir.resolve():
        return None
    commit = _git(package_dir, "rev-parse", "HEAD")
    if commit is None:
        return None
    status = _git(package_dir, "status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def environment(argv: list[str] | None = None) -> dict[str, Any]:
    """Everything results.json records about the software and the command that made it."""
    return {
        "python": platform.python_version(),
        "libraries": library_versions(),
        "git": git_state(),
        "argv": list(sys.argv if argv is None else argv),
    }

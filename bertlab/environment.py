"""Where a number was measured: the versions, CPU, threads, GPU and commit of this process.

``environment()`` is recorded in every run folder's run.json (and from there in results.jsonl and
a report's "Environment" section) and in ``bertlab bench``'s bench.json, so a training run and a
benchmark name their machine the same way.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path


def environment() -> dict:
    """Versions, CPU, threads and GPU of this process: recorded in every run folder."""
    import numpy
    import torch
    env = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
           "platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "gpu": None}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    try:
        import bertlab
        env["bertlab"] = bertlab.__version__
    except AttributeError:
        pass
    commit = git_commit()
    if commit:
        env["git"] = commit
    return env


def git_commit(root: str | os.PathLike | None = None) -> str | None:
    """The commit of the bertlab source this process runs (``+dirty`` when its ``bertlab/`` has
    uncommitted changes), or None outside a git checkout (an installed wheel) or without git: so a
    study trained across sessions shows in its report whether every run had the same code.
    ``root``: the checkout (default: the one this module is in)."""
    import subprocess
    root = Path(__file__).resolve().parent.parent if root is None else Path(root)
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
                                "bertlab"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0 or not head.stdout.strip():
        return None
    return head.stdout.strip() + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()

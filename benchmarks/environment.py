"""Machine, versions, seeds and command of a run, for the head of RESULTS.md."""

from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> str:
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            kib = int(fh.readline().split()[1])
        return f"{kib / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        return "unknown"


def environment_lines(command: str, seed: int, minutes: float) -> list[str]:
    """Markdown lines: command, date, machine, versions, seeds, runtime."""
    import torch

    packages = ("torch", "pyro-ppl", "normflows", "numpy", "arviz", "matplotlib")
    versions = ", ".join(f"{p} {_version(p)}" for p in packages)
    return [
        f"- Command: `{command}`",
        f"- Date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; "
        f"total runtime {minutes:.1f} min",
        f"- Machine: {_cpu()}, {os.cpu_count()} cores, {_memory_gib()} memory, {platform.system()} "
        f"{platform.release()}; torch threads: {torch.get_num_threads()}. **Timings were taken on a shared "
        "2-core machine with other jobs running (CPU contended): compare them within a table, not across "
        "runs.**",
        f"- Python {sys.version.split()[0]}; {versions}; pyro_snf {_version('pyro_snf')}",
        f"- Seeds: every method starts from seed {seed} (torch, Pyro); exact target samples for maximum "
        f"likelihood from seed {seed + 1}.",
    ]

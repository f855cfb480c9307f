"""The CUDA check in one unattended command (< 8 minutes): device tests, then block throughput CUDA vs CPU.

1. ``pytest -k cuda tests/``: every device-parametrised test (``tests/conftest.py`` ``DEVICES`` adds
   ``"cuda"`` when a GPU is visible) on the GPU; the summary line and a JUnit XML are kept.
2. Block throughput (the blocks and targets of :mod:`benchmarks.block_throughput`: double well and
   32-dim many-well, 5 block types): one block call of ``--num-steps`` steps, best of ``--repeats``, timed
   with ``torch.cuda.synchronize()``, at batch 1e4, 1e5, 1e6, in float32 and float64, on CUDA and on the
   CPU (all cores: ``torch.set_num_threads(os.cpu_count())``); samples/s and the CUDA/CPU ratio. CPU
   batches above ``--cpu-max-batch`` (1e5) are timed at 1e5 (CPU samples/s no longer grows there, and
   a 1e6 HMC call takes minutes). A time budget (``--budget``, 220 s) skips what is left (``skipped``);
   with ``--test-timeout`` 200 s the whole run stays under 8 minutes.

Writes ``OUT/gpu_check.json`` and ``OUT/gpu_check.md`` (default OUT: ``benchmarks/results/gpu_check``)::

    python -m benchmarks.gpu_check --out /tmp/gpu                       # on a CUDA machine
    python -m benchmarks.gpu_check --allow-cpu --batch-sizes 1000 --budget 30 --out /tmp/gpu  # dry run

Without CUDA it exits with status 2 unless ``--allow-cpu`` (then only the CPU columns are filled).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.block_throughput import blocks
from pyro_snf.targets import DoubleWell, ManyWell


def run_device_tests(out: Path, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-k", "cuda", "tests", "-p", "no:cacheprovider",
           f"--junitxml={out / 'pytest_cuda.xml'}"]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        text, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        text, code = f"timed out after {timeout} s\n{e.stdout or ''}", -1
    (out / "pytest_cuda.txt").write_text(text)
    summary = [line for line in text.splitlines() if re.search(r"\d+ (passed|failed|error|deselected)", line)]
    return {"command": " ".join(cmd), "returncode": code, "seconds": time.perf_counter() - start,
            "summary": summary[-1] if summary else text[-500:]}


def time_block(block: torch.nn.Module, target: DoubleWell | ManyWell, batch: int, device: str,
               dtype: torch.dtype, repeats: int) -> tuple[float, float]:
    """Best wall time of one block call and its acceptance rate."""
    block = block.to(device)
    x0 = target.sample(batch, dtype=dtype, device=device)
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats + (device == "cuda")):  # one warm-up call on CUDA (kernels, allocator)
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            block.forward_step(x0, target)
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
    return best, float(block.last_info.acceptance_rate)


def throughput(batches: list[int], devices: list[str], num_steps: int, repeats: int,
               budget: float, cpu_max_batch: int) -> list[dict]:
    deadline = time.perf_counter() + budget
    rows = []
    for batch in sorted(batches):  # smallest first: the budget cuts the largest batches, not a dtype
        for dtype in (torch.float32, torch.float64):
            for target in (DoubleWell(), ManyWell(32)):
                for name in blocks(num_steps, target.dim):
                    row = {"target": f"{type(target).__name__}({target.dim})", "block": name, "batch": batch,
                           "dtype": str(dtype).replace("torch.", "")}
                    for device in devices:
                        if time.perf_counter() > deadline:
                            row[f"{device}_samples_per_s"] = "skipped"
                            continue
                        torch.manual_seed(0)
                        block = blocks(num_steps, target.dim)[name]
                        n = batch if device == "cuda" else min(batch, cpu_max_batch)
                        reps = repeats if device == "cuda" else 1  # big CPU calls time steadily
                        seconds, acc = time_block(block, target, n, device, dtype, reps)
                        row[f"{device}_samples_per_s"] = n / seconds
                        row[f"{device}_batch_timed"] = n
                        row[f"{device}_acceptance"] = acc
                    cpu, gpu = row.get("cpu_samples_per_s"), row.get("cuda_samples_per_s")
                    if isinstance(cpu, float) and isinstance(gpu, float):
                        row["cuda_over_cpu"] = gpu / cpu
                    rows.append(row)
                    print(row, flush=True)
    rows.sort(key=lambda r: (r["dtype"], r["target"], r["block"], r["batch"]))
    return rows


def markdown(meta: dict, tests: dict | None, rows: list[dict]) -> str:
    lines = ["# GPU check", "", *[f"- {k}: {v}" for k, v in meta.items()], ""]
    if tests is not None:
        lines += ["## Device tests (`pytest -k cuda tests`)", "", f"- {tests['summary']}",
                  f"- return code {tests['returncode']}, {tests['seconds']:.0f} s", ""]
    lines += ["## Block throughput (samples/s, one call)", "",
              "| target | block | dtype | batch | CPU | CUDA | CUDA / CPU |", "|---|---|---|---|---|---|---|"]

    def fmt(v: object) -> str:
        return f"{v:,.0f}" if isinstance(v, float) else str(v if v is not None else "-")

    for r in rows:
        ratio = f"{r['cuda_over_cpu']:.1f}x" if "cuda_over_cpu" in r else "-"
        cpu = fmt(r.get("cpu_samples_per_s"))
        if r.get("cpu_batch_timed", r["batch"]) != r["batch"]:
            cpu += f" (timed at {r['cpu_batch_timed']:,})"
        lines.append(f"| {r['target']} | {r['block']} | {r['dtype']} | {r['batch']:,} | "
                     f"{cpu} | {fmt(r.get('cuda_samples_per_s'))} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_check"))
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--num-steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--budget", type=float, default=220.0, help="seconds for the throughput part")
    p.add_argument("--cpu-max-batch", type=int, default=100_000,
                   help="larger CPU batches are timed at this size (samples/s is flat there)")
    p.add_argument("--test-timeout", type=float, default=200.0)
    p.add_argument("--allow-cpu", action="store_true", help="run without CUDA (CPU columns only)")
    p.add_argument("--skip-tests", action="store_true")
    a = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not a.allow_cpu:
        print("no CUDA device visible (torch.cuda.is_available() is False); --allow-cpu for a dry run")
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(os.cpu_count() or 1)
    meta = {"torch": torch.__version__, "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0)
            if cuda else None, "cpu": platform.processor() or platform.machine(), "cpu_threads":
            torch.get_num_threads(), "num_steps": a.num_steps, "repeats": a.repeats}
    tests = None if a.skip_tests else run_device_tests(a.out, a.test_timeout)
    if tests is not None:
        print("device tests:", tests["summary"], flush=True)
    rows = throughput(a.batch_sizes, ["cpu", "cuda"] if cuda else ["cpu"], a.num_steps, a.repeats, a.budget,
                      a.cpu_max_batch)
    (a.out / "gpu_check.json").write_text(json.dumps({"meta": meta, "tests": tests, "throughput": rows},
                                                     indent=1))
    (a.out / "gpu_check.md").write_text(markdown(meta, tests, rows))
    print(f"wrote {a.out / 'gpu_check.md'} and gpu_check.json")
    return 0 if tests is None or tests["returncode"] in (0, 5) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

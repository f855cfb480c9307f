"""``python -m benchmarks.hard``: score :func:`pyro_snf.infer.sample_posterior` (its defaults) and the
peers on every case of the hard-posterior suite; write a markdown report and a JSON file.

For each case and seed: ``sample_posterior(model, *args, seed=seed)`` with every other option at its
default, timed; then (``--peers``) PyMC's ``sample_smc`` with a particle count chosen so that its
sampling time matches pyro_snf's (4 chains, whose spread gives its SE; a pilot chain of 500 particles
measures the cost per particle) and PyMC NUTS (2 chains, 1,000 tuning + 1,000 draws: moments only).
Scoring: :mod:`benchmarks.hard.score`.

    python -m benchmarks.hard                     # pyro_snf only, every case, one seed
    python -m benchmarks.hard --peers --seeds 3   # the committed report (benchmarks/HARD_RESULTS.md)
    python -m benchmarks.hard --only banana funnel
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import torch

from benchmarks.environment import _version, environment_lines
from benchmarks.hard.cases import HardCase, cases
from benchmarks.hard.score import score, verdict

REPORT = Path(__file__).resolve().parents[1] / "HARD_RESULTS.md"


def run_pyro_snf(case: HardCase, reference: dict, seed: int, **options: object) -> dict:
    from pyro_snf.infer import sample_posterior

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sample_posterior(case.model, *case.args, seed=seed, progress_bar=False, **options)
    seconds = time.perf_counter() - start
    x = case.flatten(res.samples)
    w = res.normalized_weights.double()
    mean = w @ x
    sd = (w @ (x - mean) ** 2).sqrt()
    s = score(reference, mean.tolist(), sd.tolist(), res.log_evidence, res.log_evidence_stderr)
    return {
        "method": "pyro_snf",
        "seed": seed,
        "seconds": seconds,
        "log_z": res.log_evidence,
        "log_z_se": res.log_evidence_stderr,
        "ess_fraction": res.ess_fraction,
        "khat": res.khat,
        "num_modes": len(res.modes),
        "warnings": list(res.warnings),
        **s,
        "verdict": verdict(s, res.warnings),
    }


def run_peers(case: HardCase, reference: dict, seed: int, seconds: float) -> list[dict]:
    from benchmarks.hard import peers

    rows = []
    pilot = peers.run_smc(case, seed + 1000, draws=500, chains=1)
    if pilot.get("seconds"):  # 4 chains (their spread gives the SE), particles for pyro_snf's time
        draws = int(min(max(500 * seconds / (4 * pilot["seconds"]), 250), 20_000))
        smc = peers.run_smc(case, seed, draws=draws, chains=4)
        if smc.get("seconds") and smc["seconds"] < 0.7 * seconds and draws < 20_000:  # fixed costs: once more
            draws = int(min(draws * seconds / smc["seconds"], 20_000))
            smc = peers.run_smc(case, seed, draws=draws, chains=4)
        smc["draws"] = draws
    else:
        smc = pilot
    nuts = peers.run_nuts(case, seed)
    for name, out in (("PyMC sample_smc", smc), ("PyMC NUTS", nuts)):
        s = score(reference, out.get("mean"), out.get("sd"), out.get("log_z"), out.get("log_z_se"))
        rows.append({"method": name, "seed": seed, **out, **s, "verdict": verdict(s, [])})
    return rows


def _f(x: object, spec: str = ".3f") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return format(x, spec) if isinstance(x, (int, float)) else str(x)


def report(rows: list[dict], refs: dict, command: str, minutes: float) -> str:
    head = [
        "# Hard-posterior suite",
        "",
        *environment_lines(command, 0, minutes),
        f"- pymc {_version('pymc')}",
        "",
        "Bar (issue 11): means within 0.2 reference sd, sd ratios in [0.8, 1.25], "
        "|log Z error| <= max(4 SE, 0.05); a miss must carry a warning. `sample_smc` gets pyro_snf's wall "
        "time (4 chains; particles per chain in the last column); NUTS: 2 chains x (1,000 + 1,000).",
        "",
        "| case | reference | method | seed | s | log Z err | SE | max mean err (sd) | sd ratios | ESS % | "
        "k-hat | verdict | particles |",
        "|" + "---|" * 13,
    ]
    for r in rows:
        ref = refs[r["case"]]
        ratios = f"{_f(r.get('sd_ratio_min'), '.2f')}-{_f(r.get('sd_ratio_max'), '.2f')}"
        ess = r.get("ess_fraction")
        head.append(
            f"| {r['case']} | {ref['method']} | {r['method']} | {r['seed']} | "
            f"{_f(r.get('seconds'), '.1f')} | "
            f"{_f(r.get('log_z_err'))} | {_f(r.get('log_z_se'))} | {_f(r.get('mean_err'), '.2f')} | "
            f"{ratios} | "
            f"{_f(None if ess is None else 100 * ess, '.2f')} | {_f(r.get('khat'), '.2f')} | {r['verdict']}"
            f"{'' if r.get('status', 'ok').startswith('ok') else ' (' + r['status'][:80] + ')'} | "
            f"{_f(r.get('draws'), 'd')} |"
        )
    warned = [r for r in rows if r.get("warnings")]
    if warned:
        head += ["", "## Warnings pyro_snf gave", ""]
        head += [
            f"- {r['case']} (seed {r['seed']}): " + " / ".join(w[:240] for w in r["warnings"]) for r in warned
        ]
    return "\n".join(head) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.hard",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--only", nargs="+", default=None, metavar="CASE")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--peers", action="store_true", help="also run PyMC sample_smc and NUTS")
    parser.add_argument(
        "--report", type=Path, default=None, help=f"markdown report (default with --peers: {REPORT})"
    )
    parser.add_argument("--json", type=Path, default=None, help="rows as JSON")
    parser.add_argument(
        "--update",
        action="store_true",
        help="rerun the --only cases: replace their rows in --json, rewrite the report",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    rows, refs = [], {}
    for case in cases():
        if args.only and case.key not in args.only:
            continue
        refs[case.key] = ref = dict(case.reference(), names=case.names)
        for seed in range(args.seeds):
            row = {"case": case.key, **run_pyro_snf(case, ref, seed)}
            rows.append(row)
            print(
                f"{case.key:24s} pyro_snf seed {seed}: {row['seconds']:.1f} s, "
                f"log Z err {_f(row['log_z_err'])}"
                f" ± {_f(row['log_z_se'])}, mean err {_f(row['mean_err'], '.2f')} sd, {row['verdict']}",
                flush=True,
            )
            if args.peers:
                for peer in run_peers(case, ref, seed, row["seconds"]):
                    rows.append({"case": case.key, **peer})
                    print(
                        f"{'':24s} {peer['method']}: {_f(peer.get('seconds'), '.1f')} s, log Z err "
                        f"{_f(peer.get('log_z_err'))}, mean err {_f(peer.get('mean_err'), '.2f')} sd, "
                        f"{peer['verdict']} {peer.get('status', '')}",
                        flush=True,
                    )
    argv = sys.argv[1:] if argv is None else argv
    command = "python -m benchmarks.hard " + " ".join(argv)
    if args.update and args.json is not None and args.json.exists():
        kept = [r for r in json.loads(args.json.read_text()) if r["case"] not in refs]
        for case in cases():
            if case.key not in refs and any(r["case"] == case.key for r in kept):
                refs[case.key] = dict(case.reference(), names=case.names)
        order = [c.key for c in cases()]
        rows = sorted(kept + rows, key=lambda r: order.index(r["case"]))
        command += "  (rows of the other cases from the previous full run)"
    if args.json is not None:  # first: the rows are the expensive part
        args.json.write_text(json.dumps(rows, indent=1, default=str))
    out = args.report or (REPORT if args.peers and (not args.only or args.update) else None)
    if out is not None:
        out.write_text(report(rows, refs, command.strip(), (time.perf_counter() - start) / 60))
    return rows


if __name__ == "__main__":
    main()

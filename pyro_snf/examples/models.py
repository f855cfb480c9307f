"""Small Pyro models for benchmarks and tutorials (data: :mod:`pyro_snf.examples.datasets`).

Both are written to vectorise under an outer ``pyro.plate`` (particles left of the model's plates),
as :func:`pyro_snf.infer.importance.importance_sample`, ``AutoSNF`` and Pyro's
``vectorize_particles`` need.

Example::

    >>> import pyro
    >>> from pyro import poutine
    >>> from pyro_snf.examples.datasets import eight_schools, load_logistic
    >>> X, y = load_logistic("german")
    >>> trace = poutine.trace(logistic_regression).get_trace(X, y)
    >>> tuple(trace.nodes["w"]["value"].shape)
    (25,)
    >>> data = eight_schools()
    >>> trace = poutine.trace(eight_schools_noncentered).get_trace(data["J"], data["sigma"], data["y"])
    >>> sorted(name for name, site in trace.iter_stochastic_nodes() if name != "schools")
    ['mu', 'tau', 'theta_tilde']
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
from torch import Tensor


def logistic_regression(X: Tensor, y: Tensor | None = None) -> Tensor:
    """Bayesian logistic regression: ``w ~ N(0, I_D)``, ``y_i ~ Bernoulli(logits = x_i . w)``.

    :param X: design matrix ``(n, D)``, intercept column included (see
        :func:`pyro_snf.examples.datasets.load_logistic`).
    :param y: labels in ``{0, 1}``, shape ``(n,)``; ``None`` samples them.
    """
    n, d = X.shape
    w = pyro.sample("w", dist.Normal(X.new_zeros(d), 1.0).to_event(1))
    # Batched w (vectorised particles) carries the data plate's dim as a trailing batch dim of
    # size 1, e.g. (N, 1, D); the linear predictor's data axis takes its place: (N, n).
    logits = w @ X.T if w.dim() == 1 else (w @ X.T).squeeze(-2)
    with pyro.plate("data", n):
        return pyro.sample("y", dist.Bernoulli(logits=logits), obs=y)


def eight_schools_noncentered(J: int, sigma: Tensor, y: Tensor | None = None) -> Tensor:
    """Eight schools, non-centred (posteriordb ``eight_schools_noncentered``).

    ``mu ~ N(0, 5)``, ``tau ~ HalfCauchy(5)``, ``theta_tilde_j ~ N(0, 1)``,
    ``theta_j = mu + tau theta_tilde_j`` (recorded as a deterministic site), ``y_j ~ N(theta_j, sigma_j)``.
    """
    mu = pyro.sample("mu", dist.Normal(sigma.new_zeros(()), 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(sigma.new_full((), 5.0)))
    with pyro.plate("schools", J):
        theta_tilde = pyro.sample("theta_tilde", dist.Normal(sigma.new_zeros(()), 1.0))
        theta = pyro.deterministic("theta", mu + tau * theta_tilde)
        return pyro.sample("obs", dist.Normal(theta, sigma), obs=y)

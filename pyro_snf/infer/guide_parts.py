"""Parts of a sampling-based autoguide that are not about its sampler: Pyro's param store (save and
load) and Monte Carlo quantiles. Used by :class:`~pyro_snf.infer.AutoSNF`.

Example::

    >>> import torch
    >>> from pyro_snf.blocks import MALABlock
    >>> chain = torch.nn.ModuleList([torch.nn.Linear(2, 2)])
    >>> block = MALABlock(0.5, adapt_step_size=True)
    >>> module = register_with_param_store("guide.chain", chain, [block])
    >>> import pyro
    >>> sorted(pyro.get_param_store().keys())[-1]
    'guide.chain$$$adapted_log_step_size.0'
    >>> pyro.clear_param_store()
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyro
import torch
from pyro.params.param_store import param_with_module_name
from torch import Tensor, nn
from torch.distributions import biject_to

from pyro_snf.blocks import StochasticBlock


def register_with_param_store(prefix: str, chain: nn.Module, blocks: Sequence[StochasticBlock]) -> nn.Module:
    """``pyro.module(prefix, chain, update_module_params=True)`` with a shape check, plus the adapted
    step sizes of ``blocks``, stored directly under ``prefix$$$adapted_log_step_size.<k>`` (not through
    ``pyro.param``: no trace site, so SVI's optimiser never sees them) so that they travel with
    ``pyro.get_param_store().save/load``.

    :raises ValueError: if the store holds a parameter of this name with another shape.
    """
    store = pyro.get_param_store()
    for name, p in chain.named_parameters():
        full = param_with_module_name(prefix, name)
        if full in store and store[full].shape != p.shape:
            raise ValueError(
                f"the param store holds '{full}' of shape {tuple(store[full].shape)}, but this guide's "
                f"parameter has shape {tuple(p.shape)} (another guide of the same name, or a different "
                "model?). Call pyro.clear_param_store() or give the guide its own name")
    module = pyro.module(prefix, chain, update_module_params=True)
    for k, block in enumerate(blocks):
        if block.adapt_step_size:
            stored = store.setdefault(param_with_module_name(prefix, f"adapted_log_step_size.{k}"),
                                      block.log_step_size)
            if stored is not block.log_step_size:
                block.log_step_size = stored
    return module


class MonteCarloQuantiles:
    """``quantiles`` and ``median`` of an AutoContinuous-layout guide from ``num_quantile_samples``
    unweighted draws of ``self.get_posterior(...)`` (over the unconstrained latents), per coordinate
    in the unconstrained space and then constrained, like AutoContinuous."""

    num_quantile_samples: int = 1000

    @torch.no_grad()
    def quantiles(self, quantiles: Sequence[float] | Tensor, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        x = self.get_posterior(*args, **kwargs).rsample((self.num_quantile_samples,))
        q = torch.as_tensor(quantiles, dtype=x.dtype, device=x.device)
        latents = torch.quantile(x, q.reshape(-1), dim=0).reshape(q.shape + x.shape[-1:])
        result: dict[str, list[Tensor]] = {}
        for latent in latents.reshape(-1, x.shape[-1]):
            for site, value in self._unpack_latent(latent):
                result.setdefault(site["name"], []).append(biject_to(site["fn"].support)(value))
        return {k: torch.stack(v).reshape(q.shape + v[0].shape) for k, v in result.items()}

    @torch.no_grad()
    def median(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """Monte Carlo median of the guide (see :meth:`quantiles`)."""
        return {k: v[0] for k, v in self.quantiles([0.5], *args, **kwargs).items()}

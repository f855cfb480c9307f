"""Ready-made SNF architectures: flow stages interleaved with stochastic blocks on a schedule.

Two layouts, both with the annealing parameter rising linearly to 1
(``betas = linspace(0, 1, num_stages)``); a flow stage ``F`` is a group of bijections (e.g. two
RealNVP couplings), a block ``B`` a stochastic block:

- interleaved (default): a stochastic block at the prior, then flow stages with a stochastic block
  between consecutive ones, optionally one more at the target: ``B(0) F B(0.5) F B(1) F [B(1)]``;
- ``blocks_after_flows=True``, the layout of the paper's released code: each flow stage is followed
  by a stochastic block, optionally preceded by one at the prior: ``[B(0)] F B(0) F B(0.5) F B(1)``.
  The last block relaxes the flow's output at the target itself
  (``paper_double_well_snf(..., layout="after_flows")``).

Example::

    >>> import torch, pyro.distributions as dist
    >>> from pyro_snf.targets import DoubleWell
    >>> snf = make_snf(DoubleWell(), block="metropolis", hidden_dims=(16, 16))
    >>> [type(t).__name__ for t in snf.layers][:3]
    ['MetropolisBlock', 'AffineCoupling', 'Permute']
    >>> paper = paper_double_well_snf(DoubleWell(), "snf", layout="after_flows")
    >>> [round(float(b.beta), 2) for b in paper.blocks]
    [0.0, 0.0, 0.5, 1.0]
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import pyro.distributions as dist
import torch
from torch.distributions import AffineTransform, Transform

from pyro_snf.blocks import BlockFactory, StochasticBlock, block_factory, resolve_block
from pyro_snf.blocks.metropolis import MetropolisBlock
from pyro_snf.distribution import StochasticNormalizingFlow
from pyro_snf.energy import Potential
from pyro_snf.transforms import FLOWS, make_flow


def default_betas(num_blocks: int, metropolis_adjusted: bool) -> list[float]:
    """The annealing schedule of :func:`annealed_blocks`: ``linspace(0, 1, n + 1)[1:]`` (ends at 1)
    for unadjusted blocks, ``linspace(0, 1, n + 2)[1:-1]`` for Metropolis-adjusted ones, whose path
    term at ``beta = 1`` right before the target, ``u(y) - u(x)``, would change no weight."""
    grid = torch.linspace(0, 1, num_blocks + 2 if metropolis_adjusted else num_blocks + 1).tolist()
    return grid[1:-1] if metropolis_adjusted else grid[1:]


def annealed_blocks(block: str | type[StochasticBlock] | BlockFactory, num_blocks: int, *,
                    betas: Sequence[float] | None = None, **block_kwargs) -> list[StochasticBlock]:
    """``num_blocks`` blocks on an annealing schedule (default :func:`default_betas`).

    :param block: a key of :data:`pyro_snf.blocks.BLOCKS`, a block class, or a factory
        ``beta -> block`` (then ``block_kwargs`` must be empty).
    :param block_kwargs: constructor arguments of every block (``step_size``, ``num_steps``, ...).
        ``adapt_step_size`` defaults to on for Metropolis-adjusted blocks unless
        ``learn_step_size=True``.

    Example::

        >>> [round(b.beta, 2) for b in annealed_blocks("mala", 2)]
        [0.33, 0.67]
    """
    if isinstance(num_blocks, bool) or int(num_blocks) != num_blocks or num_blocks < 0:
        raise ValueError(f"num_blocks must be an integer >= 0, got {num_blocks}")
    num_blocks = int(num_blocks)
    if isinstance(block, str) or isinstance(block, type):
        cls = resolve_block(block)
        adjusted = cls.metropolis_adjusted
        if block_kwargs.get("adapt_step_size") is None:
            block_kwargs["adapt_step_size"] = adjusted and not block_kwargs.get("learn_step_size", False)
    else:
        adjusted = num_blocks > 0 and block_factory(block)(1.0).metropolis_adjusted
    betas = default_betas(num_blocks, adjusted) if betas is None else [float(b) for b in betas]
    if len(betas) != num_blocks:
        raise ValueError(f"betas need one entry per block ({num_blocks}), got {len(betas)}")
    make = block_factory(block, **block_kwargs)
    return [make(beta) for beta in betas]


def snf_layers(input_dim: int, *, num_stages: int = 3, num_couplings: int = 2,
               hidden_dims: Sequence[int] = (64, 64), flow: str | None = "real_nvp",
               block: str | BlockFactory | None = "metropolis", block_kwargs: dict | None = None,
               betas: Sequence[float] | None = None, prior_block: bool = True,
               final_block: bool = False, blocks_after_flows: bool = False,
               flow_scale: float | None = None, num_flow_blocks: int | None = None) -> list[Transform]:
    """Layers ``[B(beta_0)] F_1 B(beta_1) F_2 ... F_K [B(1)]``, or with ``blocks_after_flows``
    ``[B(0)] F_1 B(beta_0) F_2 B(beta_1) ... F_K B(beta_K-1)``.

    :param flow: a key of :data:`pyro_snf.transforms.FLOWS` (``"real_nvp"``, ``"spline"``, ...), a
        callable ``dim -> Transform(s)``, or ``None`` (no flow: annealed importance sampling with
        ``num_stages`` stochastic blocks).
    :param block: a key of :data:`pyro_snf.blocks.BLOCKS`, a block class, a callable
        ``beta -> block``, or ``None`` (plain flow).
    :param block_kwargs: keyword arguments of the block class (``step_size``, ``num_steps``, ...).
    :param num_stages: number of flow stages ``F`` (``num_flow_blocks``, its old name, still works with a
        ``DeprecationWarning``).
    :param num_couplings: couplings per flow stage.
    :param betas: one annealing value per flow stage (default ``linspace(0, 1, num_stages)``).
    :param prior_block: put the first block before the first flow stage (at the prior).
    :param final_block: add a block at ``beta = 1`` after the last flow stage (interleaved layout).
    :param blocks_after_flows: the released code's layout (see module doc); ``prior_block`` then adds
        a block at ``beta = 0`` before the first flow stage.
    :param flow_scale: the target's length scale, when far from 1: each flow stage then acts on
        ``x / flow_scale`` (a fixed ``AffineTransform`` before it and its inverse after it; their
        log-determinants cancel), so that the coupling networks see inputs of order 1, while the
        stochastic blocks still act in the target's own coordinates.
    """
    if num_flow_blocks is not None:
        warnings.warn("snf_layers(num_flow_blocks=) is now num_stages=", DeprecationWarning, stacklevel=2)
        num_stages = num_flow_blocks
    make_block = None if block is None else block_factory(block, **(block_kwargs or {}))
    if flow is not None and not callable(flow) and flow not in FLOWS:
        raise ValueError(f"unknown flow {flow!r}; choose one of {sorted(FLOWS)}, a callable or None")
    if flow_scale is not None and not flow_scale > 0:
        raise ValueError(f"flow_scale must be a positive number, got {flow_scale}")

    def flow_stage() -> list[Transform]:
        couplings = make_flow(flow, input_dim, hidden_dims=hidden_dims, num_couplings=num_couplings)
        if flow_scale is None:
            return couplings
        down = AffineTransform(0.0, 1.0 / flow_scale, event_dim=1)
        return [down, *couplings, AffineTransform(0.0, float(flow_scale), event_dim=1)]

    if betas is None:
        betas = torch.linspace(0.0, 1.0, num_stages).tolist() if num_stages > 1 else [1.0]
    if len(betas) != num_stages:
        raise ValueError(f"need one beta per flow stage ({num_stages}), got {len(betas)}")
    if blocks_after_flows:
        if make_block is None or flow is None:
            raise ValueError("blocks_after_flows needs both a flow and a block")
        layers = [make_block(0.0)] if prior_block else []
        for beta in betas:
            layers.extend(flow_stage())
            layers.append(make_block(float(beta)))
        return layers
    layers: list[Transform] = []
    for i, beta in enumerate(betas):
        if make_block is not None and (i > 0 or prior_block):
            layers.append(make_block(float(beta)))
        if flow is not None:
            layers.extend(flow_stage())
    if make_block is not None and (final_block or flow is None):
        layers.append(make_block(1.0))
    return layers


def make_snf(potential: Potential, input_dim: int | None = None, *,
             base_dist: dist.TorchDistribution | None = None, **kwargs) -> StochasticNormalizingFlow:
    """An SNF with a standard normal base (unless given) and :func:`snf_layers` ``(**kwargs)``.

    ``input_dim`` defaults to ``potential.dim`` for :mod:`pyro_snf.targets` objects.
    """
    if input_dim is None:
        input_dim = getattr(potential, "dim", None)
        if input_dim is None:
            raise ValueError("pass input_dim= (the potential has no .dim attribute)")
    if base_dist is None:
        base_dist = dist.Normal(torch.zeros(input_dim), torch.ones(input_dim)).to_event(1)
    return StochasticNormalizingFlow(base_dist, snf_layers(input_dim, **kwargs), potential)


def paper_double_well_snf(potential: Potential, variant: str = "snf",
                          layout: str = "interleaved") -> StochasticNormalizingFlow:
    """The double-well models of the paper's comparison, one call each.

    ``variant``: ``"rnvp"`` (3 RealNVP stages of 2 couplings, MLP 64-64), ``"snf"`` (the same plus
    Metropolis blocks of 20 steps, step 0.25) or ``"snf_learnable"`` (Metropolis step sizes and the
    intermediate ``beta`` values learnable). ``layout``: ``"interleaved"`` (default,
    ``MC(0) RNVP MC(0.5) RNVP MC(1) RNVP``) or ``"after_flows"``, the paper's released code
    (``MC(0) RNVP MC(0) RNVP MC(0.5) RNVP MC(1)``). Measured over 10 trainings
    (``benchmarks/double_well_paper.py``), the interleaved layout had the lower and steadier
    reweighted free-energy error with fixed step sizes, so it is the default.
    """
    if variant == "rnvp":
        return make_snf(potential, 2, block=None)
    if variant not in ("snf", "snf_learnable"):
        raise ValueError(f"variant must be 'rnvp', 'snf' or 'snf_learnable', got {variant!r}")
    if layout not in ("interleaved", "after_flows"):
        raise ValueError(f"layout must be 'interleaved' or 'after_flows', got {layout!r}")
    learn = variant == "snf_learnable"
    after = layout == "after_flows"
    count = iter(range(4))

    def metropolis(beta: float) -> MetropolisBlock:
        index = next(count)
        # learnable annealing for the intermediate blocks (not the prior block, not the target one)
        learn_beta = learn and (index in (1, 2) if after else 0.0 < beta < 1.0)
        return MetropolisBlock(step_size=0.25, num_steps=20, beta=beta, learn_step_size=learn,
                               learn_beta=learn_beta)

    return make_snf(potential, 2, block=metropolis, blocks_after_flows=after)

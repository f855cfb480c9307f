"""The block registry: names of the block classes, and factories ``beta -> block``.

Adding a block class is its file plus one line in :data:`BLOCKS`.

Example::

    >>> make = block_factory("mala", step_size=0.2, num_steps=3)
    >>> block = make(0.5)
    >>> type(block).__name__, block.beta, block.metropolis_adjusted
    ('MALABlock', 0.5, True)
"""

from __future__ import annotations

from collections.abc import Callable

from pyro_snf.blocks.base import StochasticBlock
from pyro_snf.blocks.hmc import HMCBlock
from pyro_snf.blocks.langevin import LangevinBlock
from pyro_snf.blocks.mala import MALABlock
from pyro_snf.blocks.metropolis import MetropolisBlock
from pyro_snf.blocks.underdamped import UnderdampedLangevinBlock

#: block classes by name (``"rwm"`` is an alias of ``"metropolis"``).
BLOCKS: dict[str, type[StochasticBlock]] = {
    "metropolis": MetropolisBlock,
    "rwm": MetropolisBlock,
    "mala": MALABlock,
    "hmc": HMCBlock,
    "langevin": LangevinBlock,
    "underdamped": UnderdampedLangevinBlock,
}

#: a callable ``beta -> block`` that builds a new block for an annealing value.
BlockFactory = Callable[[float], StochasticBlock]


def resolve_block(block: str | type[StochasticBlock]) -> type[StochasticBlock]:
    """The block class for a name in :data:`BLOCKS` or a :class:`StochasticBlock` subclass."""
    if isinstance(block, str) and block in BLOCKS:
        return BLOCKS[block]
    if isinstance(block, type) and issubclass(block, StochasticBlock):
        return block
    raise ValueError(f"unknown block {block!r}: block must be one of {sorted(BLOCKS)} or a "
                     "StochasticBlock subclass")


def block_factory(block: str | type[StochasticBlock] | BlockFactory, **block_kwargs) -> BlockFactory:
    """A factory ``beta -> new block``.

    :param block: a name in :data:`BLOCKS` or a :class:`StochasticBlock` subclass, built as
        ``cls(beta=beta, **block_kwargs)``; or any other callable ``beta -> block``, used as it is
        (``block_kwargs`` must then be empty).
    """
    if isinstance(block, str) or isinstance(block, type):
        cls = resolve_block(block)
        return lambda beta: cls(beta=beta, **block_kwargs)
    if not callable(block):
        raise ValueError(f"unknown block {block!r}: block must be one of {sorted(BLOCKS)}, a "
                         "StochasticBlock subclass or a callable beta -> block")
    if block_kwargs:
        raise ValueError(f"block is a factory (beta -> block), so it takes no block keyword arguments; "
                         f"got {sorted(block_kwargs)}: put them into the factory")
    return block

"""Saving and loading :class:`~pyro_snf.infer.AmortizedSNF`, checked against its configuration fingerprint
(as :class:`~pyro_snf.infer.guide_parts.SavedGuide` does for ``AutoSNF``).

Three ways, each giving the same numbers after loading:

* Pyro's param store (``pyro.get_param_store().save/load``): every guide call registers the guide's
  parameters (encoder, flows, learnable block parameters; adapted step sizes directly, see
  :func:`~pyro_snf.infer.guide_parts.register_with_param_store`) under its ``name``, after
  :func:`~pyro_snf.infer.guide_parts.check_param_store`: parameters saved by a differently configured
  guide (other blocks, betas, flows, context or latent size, encoder shapes) raise a ``ValueError``
  naming the differences instead of leaving the guide silently untrained;
* ``torch.save(guide)`` / ``torch.load(path, weights_only=False)``: the model travels with the guide
  when it pickles (a module-level function, or a method of a picklable object), else
  :meth:`SavedAmortizedGuide.set_model` after loading;
* ``state_dict`` / ``load_state_dict``: the state carries the fingerprint (``_extra_state``); loading
  the state of a differently configured guide raises a ``ValueError`` before anything is copied.

Example::

    >>> fingerprint = amortized_fingerprint([], flow="coupling", num_flows=0, latent_dim=None,
    ...                                     context_dim=None, hidden_dims=None)
    >>> fingerprint["num_blocks"], fingerprint["flow"]
    ('0', 'none')
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pyro
from pyro.params.param_store import param_with_module_name
from torch import Tensor, nn

from pyro_snf.blocks import StochasticBlock
from pyro_snf.infer.guide_parts import (
    CONFIG_NAME,
    _pickles,
    check_param_store,
    config_differences,
    config_fingerprint,
    register_with_param_store,
)


def amortized_fingerprint(blocks: Sequence[StochasticBlock], *, flow: str, num_flows: int,
                          latent_dim: int | None, context_dim: int | None,
                          hidden_dims: Sequence[int] | None) -> dict[str, str]:
    """What saved parameters and the guide loading them must agree on: blocks (types, betas), the
    conditional flows (kind, layers per stage, hidden sizes), the latent and context sizes."""
    config = config_fingerprint(blocks, -1 if latent_dim is None else latent_dim,
                                flow=flow if num_flows else "none", hidden_dims=hidden_dims,
                                base="encoder")
    config.pop("flow_net", None)
    if latent_dim is None:
        config["latent_dim"] = "from the encoder"
    return {**config, "num_flows": str(num_flows),
            "context_dim": "(loc, log scale)" if context_dim is None else str(context_dim)}


class SavedAmortizedGuide:
    """Mixin of :class:`~pyro_snf.infer.AmortizedSNF` (an ``nn.Module`` with ``name``, ``blocks``,
    ``_model`` (a 1-tuple) and ``config``): param-store registration checked against the fingerprint,
    pickling, state-dict fingerprint (module docstring)."""

    config: dict[str, str]
    _store_token: Tensor | None = None

    def _register(self) -> None:
        store, key = pyro.get_param_store(), param_with_module_name(self.name, CONFIG_NAME)
        if self._store_token is None or key not in store or store[key] is not self._store_token:
            self._store_token = check_param_store(self.name, self, list(self.blocks), self.config)
        register_with_param_store(self.name, self, list(self.blocks))

    def set_model(self, model: Callable) -> None:
        """Give the guide its model (after ``torch.load`` of a guide whose model did not pickle)."""
        self._model = (model,)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        owner = getattr(self._model[0], "__self__", None)  # a model that is a method of a module
        modules = [self] + ([owner] if isinstance(owner, nn.Module) else [])
        for t in [t for m in modules for t in list(m.parameters()) + list(m.buffers())]:
            t.__dict__.pop("unconstrained", None)  # the param store's weakrefs do not pickle
        model = self._model if self._model is not None else (None,)
        state["_model"] = model if _pickles(model) else (None,)
        state["_store_token"] = None
        return state

    def get_extra_state(self) -> dict[str, str]:
        return dict(self.config)

    def set_extra_state(self, state: dict[str, str]) -> None:
        diff = config_differences(state, self.config)
        if diff:
            raise ValueError("load_state_dict: the state dict comes from a differently configured guide: "
                             f"{'; '.join(diff)}. Build the guide with the options it was saved with")

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """``nn.Module.load_state_dict``, checked against the configuration; the loaded values reach
        Pyro's param store too (the guide's parameters are registered first, then overwritten in place)."""
        if "_extra_state" in state_dict:
            self.set_extra_state(state_dict["_extra_state"])  # before anything is registered or copied
        self._register()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)  # type: ignore[misc]


"""Parts of a sampling-based autoguide that are not about its sampler: saving and loading (Pyro's
param store, ``torch.save`` and ``state_dict``, all checked against a configuration fingerprint) and
Monte Carlo quantiles. Used by :class:`~pyro_snf.infer.AutoSNF`.

Example::

    >>> import torch
    >>> from pyro_snf.blocks import MALABlock
    >>> chain = torch.nn.ModuleList([torch.nn.Linear(2, 2)])
    >>> block = MALABlock(0.5, adapt_step_size=True)
    >>> module = register_with_param_store("guide.chain", chain, [block])
    >>> import pyro
    >>> sorted(pyro.get_param_store().keys())[-1]
    'guide.chain$$$adapted_log_step_size.0'
    >>> config = config_fingerprint([block], 2, flow="none", hidden_dims=None, base="full")
    >>> token = check_param_store("guide.chain", chain, [block], config)  # fits: records the config
    >>> try:
    ...     check_param_store("guide.chain", chain, [block], {**config, "base": "diagonal"})
    ... except ValueError as e:
    ...     print(str(e).split(": ")[1].split(".")[0])
    base full (saved) vs diagonal (this guide)
    >>> pyro.clear_param_store()
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable, Sequence
from typing import Any

import pyro
import torch
from pyro.params.param_store import param_with_module_name
from torch import Tensor, nn
from torch.distributions import biject_to

from pyro_snf.blocks import StochasticBlock

#: the name, under a guide's prefix in Pyro's param store, of its configuration fingerprint
CONFIG_NAME = "config"
_HINT = ("Build this guide with the options they were saved with, or call pyro.clear_param_store() to "
         "start afresh")


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


def config_fingerprint(blocks: Sequence[StochasticBlock], latent_dim: int, *, flow: str | Callable,
                       hidden_dims: Sequence[int] | None, base: str) -> dict[str, str]:
    """What saved parameters and the guide loading them must agree on: the blocks (types and betas),
    the flow, its hidden sizes, the base map and the latent dimension."""
    return {"latent_dim": str(latent_dim), "num_blocks": str(len(blocks)),
            "blocks": ",".join(type(b).__name__ for b in blocks),
            "betas": ",".join(f"{float(torch.as_tensor(b.beta).detach()):.4g}" for b in blocks),
            "flow": flow if isinstance(flow, str) else getattr(flow, "__qualname__", type(flow).__name__),
            "hidden_dims": "default" if hidden_dims is None else str(list(hidden_dims)), "base": base,
            **({"flow_net": "readout 1/fan_in"} if flow in ("coupling", "iaf") else {})}


def config_differences(saved: dict[str, str], ours: dict[str, str]) -> list[str]:
    """``"<field> <saved> (saved) vs <ours> (this guide)"`` for every field that differs."""
    return [f"{k} {saved.get(k, '-')} (saved) vs {ours.get(k, '-')} (this guide)"
            for k in sorted(set(saved) | set(ours)) if saved.get(k) != ours.get(k)]


def check_param_store(prefix: str, chain: nn.Module, blocks: Sequence[StochasticBlock],
                      config: dict[str, str] | None) -> Tensor | None:
    """Check that Pyro's param store holds under ``prefix`` exactly what this guide would register
    there (:func:`register_with_param_store`), or nothing, and record ``config`` (as a tensor under
    ``prefix$$$config``, so that the store's ``save/load`` keep it). Returns the stored fingerprint:
    the caller checks again only when the store holds another one (e.g. after a ``load``).

    :raises ValueError: naming what differs: the fingerprint's fields, the parameters the store holds
        that this guide does not have (adapted step sizes of blocks it lacks among them), those it
        lacks, and shapes.
    """
    store, head = pyro.get_param_store(), param_with_module_name(prefix, "")
    key, where = head + CONFIG_NAME, (f"Pyro's param store holds parameters under '{prefix}' written by "
                                      "a differently configured guide")
    if key in store and config is not None:
        diff = config_differences(json.loads(bytes(store[key].detach().round().byte().tolist())), config)
        if diff:
            raise ValueError(f"{where}: {'; '.join(diff)}. {_HINT}")
    ours = {n: tuple(p.shape) for n, p in chain.named_parameters() if p.requires_grad}
    ours.update({f"adapted_log_step_size.{k}": tuple(b.log_step_size.shape)
                 for k, b in enumerate(blocks) if b.adapt_step_size})
    theirs = {n[len(head):]: tuple(store[n].shape) for n in store.keys() if n.startswith(head) and n != key}
    if theirs:
        extra, missing = sorted(theirs.keys() - ours.keys()), sorted(ours.keys() - theirs.keys())
        steps = [n.rsplit(".", 1)[1] for n in extra if n.startswith("adapted_log_step_size.")]
        extra = [n for n in extra if not n.startswith("adapted_log_step_size.")]
        shapes = [f"{n} {theirs[n]} (saved) vs {ours[n]} (this guide)"
                  for n in sorted(theirs.keys() & ours.keys()) if theirs[n] != ours[n]]
        problems = []
        if extra:
            problems.append(f"parameters this guide does not have: {extra}")
        if steps:
            problems.append(f"adapted step sizes of blocks {steps}, which this guide lacks or does not adapt")
        if missing:
            problems.append(f"parameters of this guide missing from the store: {missing}")
        if shapes:
            problems.append(f"other shapes: {', '.join(shapes)}")
        if problems:
            raise ValueError(f"{where}: {'; '.join(problems)}. {_HINT}")
    if config is not None and key not in store:
        store[key] = torch.tensor(list(json.dumps(config, sort_keys=True).encode()), dtype=torch.float64)
    return store[key] if key in store else None


class SavedGuide:
    """Saving and loading of an autoguide whose layers are built on its first call, for a guide class
    with ``self.chain`` (an ``nn.ModuleList``), ``self._blocks``, ``self._raw_model`` (a 1-tuple, or
    None once unpickled without its model) and ``self._config`` (:func:`config_fingerprint`, set when
    the layers are built):

    * Pyro's param store: every guide call registers the layers (:func:`register_with_param_store`)
      after :func:`check_param_store` (whenever the store changed): parameters saved by a differently
      configured guide raise a ``ValueError`` instead of leaving this one silently untrained;
    * ``torch.save(guide)`` keeps the model when it pickles (Pyro's ``AutoGuide`` always drops it);
      otherwise call :meth:`set_model` after ``torch.load``;
    * :meth:`state_dict` carries the fingerprint (``_extra_state``): :meth:`load_state_dict` from a
      differently configured guide raises a ``ValueError`` naming the differences, before it copies
      anything; before the first call (no layers yet) it asks for :meth:`setup`.
    """

    _config: dict[str, str] | None = None
    _store_token: Tensor | None = None

    def setup(self, *args: Any, **kwargs: Any) -> None:
        """Build the layers for these model arguments, as the first call does, without sampling
        (e.g. before :meth:`load_state_dict`)."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)

    def set_model(self, model: Callable) -> None:
        """Give the guide its model (after ``torch.load`` of a guide whose model did not pickle; the
        guide is set up already, so ``init_loc_fn`` is not needed again)."""
        self._raw_model = self._model = (model,)

    def _chain(self) -> nn.Module:
        """Register the layers' parameters (and adapted step sizes) with Pyro's param store (in the
        module's Pyro context, as its calls do: ``get_posterior`` and ``load_state_dict`` need it)."""
        with self._pyro_context:
            prefix, chain = self._pyro_get_fullname("chain"), self._modules["chain"]
            store, key = pyro.get_param_store(), param_with_module_name(prefix, CONFIG_NAME)
            if self._store_token is None or key not in store or store[key] is not self._store_token:
                self._store_token = check_param_store(prefix, chain, self._blocks, self._config)
            return register_with_param_store(prefix, chain, self._blocks)

    def __getstate__(self) -> dict:
        model, master = self._model, self.master
        state = dict(super().__getstate__())  # AutoGuide drops the model and `master` (on self too)
        self._model, self.master = model, master
        for buffer in self.buffers():  # the param store's weakrefs (PyroModule drops the parameters')
            buffer.__dict__.pop("unconstrained", None)
        raw = self._raw_model if _pickles(self._raw_model) else None
        model = model if raw is not None and _pickles(model) else raw  # (Pyro's, wrapped for init_loc_fn)
        return {**state, "_raw_model": raw, "_model": model, "_store_token": None}

    def get_extra_state(self) -> dict[str, str]:
        return dict(self._config or {})

    def set_extra_state(self, state: dict[str, str]) -> None:
        diff = config_differences(state, self._config or {})
        if diff:
            raise ValueError("load_state_dict: the state dict comes from a differently configured guide: "
                             f"{'; '.join(diff)}")

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """``nn.Module.load_state_dict``, checked against the configuration; the loaded values reach
        Pyro's param store too (the layers are registered first, then overwritten in place)."""
        if self.prototype_trace is None:
            raise RuntimeError(f"{type(self).__name__}.load_state_dict: the guide has no layers yet (they "
                               "are built on its first call, for the model's arguments): call "
                               "guide.setup(*args, **kwargs) (or guide(*args, **kwargs)) first")
        self._chain()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


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


def _pickles(obj: Any) -> bool:
    try:
        pickle.dumps(obj)
    except Exception:
        return False
    return True

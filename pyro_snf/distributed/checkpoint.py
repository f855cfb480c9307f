"""Checkpoints of data-parallel training: written once (rank 0), loadable anywhere.

Data-parallel ranks hold identical parameters (same averaged gradients, same optimiser, step sizes adapted
to the pooled acceptance), so rank 0's copy is the job's state. :func:`save_checkpoint` writes it on rank 0
only (to a temporary file renamed into place: a crash never leaves half a checkpoint), then all ranks
meet at a barrier so that nobody reads it early. Tensors are moved to the CPU first, so a checkpoint from
a GPU job loads on a CPU-only machine. :func:`training_state` collects the usual pieces (a module's
``state_dict``, Pyro's param store, the optimiser's state, anything else); :func:`load_checkpoint` reads
it without any process group; :func:`restore` puts it back. The file is a pickle (``torch.load`` with
``weights_only=False``, because Pyro's param store holds constraint objects): load only files you trust.

Example (no process group: rank 0 is the only rank)::

    >>> import os, tempfile, torch
    >>> net = torch.nn.Linear(2, 1)
    >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.pt")
    >>> _ = save_checkpoint(path, training_state(module=net, param_store=False, extra={"step": 7}))
    >>> other = torch.nn.Linear(2, 1)
    >>> state = restore(load_checkpoint(path), module=other)
    >>> bool(torch.equal(other.weight, net.weight)), state["extra"]["step"]
    (True, 7)
"""

from __future__ import annotations

import os
from typing import Any

import pyro
import torch
import torch.distributed as dist
from pyro.optim import PyroOptim
from torch import nn

__all__ = ["load_checkpoint", "restore", "save_checkpoint", "training_state"]

_Optim = torch.optim.Optimizer | PyroOptim


def training_state(module: nn.Module | None = None, optimizer: _Optim | None = None,
                   param_store: bool = True, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A checkpoint dictionary: ``module`` (state_dict), ``param_store`` (Pyro's ``get_state()``),
    ``optimizer`` (``state_dict()`` / Pyro's ``get_state()``), ``extra`` (plain values, e.g. the
    step, a TrainHistory as a dict)."""
    state: dict[str, Any] = {"format": "pyro_snf.distributed.checkpoint/1"}
    if module is not None:
        state["module"] = module.state_dict()
    if param_store:
        state["param_store"] = pyro.get_param_store().get_state()
    if optimizer is not None:
        pyro_optim = isinstance(optimizer, PyroOptim)
        state["optimizer"] = optimizer.get_state() if pyro_optim else optimizer.state_dict()
    state["extra"] = dict(extra or {})
    return state


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> str:
    """Write ``state`` (tensors moved to the CPU) on rank 0 only; every rank waits for it (barrier).
    Without a process group the caller is rank 0. Returns the path."""
    path = os.fspath(path)
    grouped = dist.is_available() and dist.is_initialized()
    if not grouped or dist.get_rank() == 0:
        tmp = f"{path}.tmp{os.getpid()}"
        torch.save(_to_cpu(state), tmp)
        os.replace(tmp, path)
    if grouped:
        dist.barrier()
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint (any process, no process group needed; trusted files only, see above)."""
    state = torch.load(os.fspath(path), map_location=map_location, weights_only=False)
    if not isinstance(state, dict) or state.get("format") != "pyro_snf.distributed.checkpoint/1":
        raise ValueError(f"{path} is not a pyro_snf.distributed checkpoint (written by save_checkpoint)")
    return state


def restore(state: dict[str, Any], module: nn.Module | None = None, optimizer: _Optim | None = None,
            param_store: bool = True) -> dict[str, Any]:
    """Load what ``state`` holds into ``module``, Pyro's param store and ``optimizer``; returns ``state``.

    :raises ValueError: if a part is asked for that the checkpoint does not hold."""
    for part, wanted in (("module", module is not None), ("optimizer", optimizer is not None)):
        if wanted and part not in state:
            raise ValueError(f"the checkpoint holds no {part!r}: save it with training_state({part}=...)")
    if param_store and "param_store" in state:
        pyro.get_param_store().set_state(state["param_store"])
    if module is not None:
        module.load_state_dict(state["module"])
    if optimizer is not None:
        if isinstance(optimizer, PyroOptim):
            optimizer.set_state(state["optimizer"])
        else:
            optimizer.load_state_dict(state["optimizer"])
    return state


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj

"""Beyond one process: importance sampling sharded over ranks and data-parallel training, on
``torch.distributed`` (gloo on CPU, nccl on GPU), with every pooled number equal to the single-process
number on the union of the ranks' draws (:mod:`~pyro_snf.distributed.sharding` says how the seeds make
that union well defined).

Launch: ``torchrun --nproc_per_node 2 script.py``; the script calls
:func:`~pyro_snf.distributed.launch.init_from_env` (or ``torch.distributed.init_process_group("gloo")``).

- :func:`sharded_importance_sample`, :func:`sharded_flow_sample`: pooled log evidence, SE, ESS, k-hat,
  draws or a pooled resample within a memory budget;
- :func:`data_parallel_fit`, :class:`DataParallelSVI`: gradients averaged over ranks, step sizes adapted
  to the acceptance averaged over ranks;
- :func:`save_checkpoint` (rank 0 writes), :func:`load_checkpoint` (anywhere), :func:`broadcast_state`.

Nothing here is imported by ``import pyro_snf``.
"""

from pyro_snf.distributed.checkpoint import load_checkpoint, restore, save_checkpoint, training_state
from pyro_snf.distributed.importance import (
    ShardedImportanceResult,
    concatenate_results,
    sharded_flow_sample,
    sharded_importance_sample,
)
from pyro_snf.distributed.launch import free_port, init_from_env, launch_local
from pyro_snf.distributed.sharding import (
    SEED_STRIDE,
    EmulatedShards,
    ProcessGroupShards,
    shard_seed,
    shard_sizes,
)
from pyro_snf.distributed.svi import DataParallelSVI, PerShard
from pyro_snf.distributed.training import average_gradients, broadcast_state, data_parallel_fit

__all__ = [
    "SEED_STRIDE",
    "DataParallelSVI",
    "EmulatedShards",
    "PerShard",
    "ProcessGroupShards",
    "ShardedImportanceResult",
    "average_gradients",
    "broadcast_state",
    "concatenate_results",
    "data_parallel_fit",
    "free_port",
    "init_from_env",
    "launch_local",
    "load_checkpoint",
    "restore",
    "save_checkpoint",
    "shard_seed",
    "shard_sizes",
    "sharded_flow_sample",
    "sharded_importance_sample",
    "training_state",
]

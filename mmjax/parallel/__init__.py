"""Device mesh, sharding rules and per-process batches for sharded training."""

from mmjax.parallel.mesh import AXES, BATCH_AXES, check_batch, make_mesh, mesh_shape
from mmjax.parallel.partitioning import (RULES, activate, batch_sharding, param_shardings,
                                         replicated, state_shardings)

__all__ = (
    "AXES", "BATCH_AXES", "RULES", "activate", "batch_sharding", "check_batch",
    "make_mesh", "mesh_shape", "param_shardings", "replicated", "state_shardings",
)

"""Restore a training workdir's newest checkpoint onto all local devices and evaluate it.

    python tests/train/restore_eval.py WORKDIR RETRIEVAL_CSV FSDP
Prints one JSON line: the restored mesh, a SHA-256 of every parameter and optimizer-state byte,
and the retrieval evaluation of `clapcomp.train.loop.evaluate` (the trainer's periodic eval).
"""

import hashlib
import json
import sys

import jax
import numpy as np

from clapcomp.train import checkpoint as ckpt_lib
from clapcomp.train import distributed, loop
from clapcomp.train import init as init_lib
from clapcomp.train import state as state_lib


def main(workdir: str, csv: str, fsdp: int) -> None:
    config = ckpt_lib.read_config(workdir)
    config.mesh.fsdp = fsdp
    config.mesh.data = -1
    config.evaluators = [dict(name="retrieval", kwargs=dict(data=csv))]
    mesh = distributed.make_mesh(config.mesh.data, config.mesh.fsdp)
    checkpointer = ckpt_lib.Checkpointer(workdir, keep=config.keep_checkpoints)
    parts = state_lib.setup(config, mesh)
    tokenizer = init_lib.run_tokenizer(config, workdir)
    iterator = loop._data_iterator(config, mesh, tokenizer)
    state = checkpointer.restore(parts.abstract, iterator.grain_iterator)
    checkpointer.close()
    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves((state.params, state.opt_state, state.model_state)):
        digest.update(np.asarray(leaf).tobytes())
    sharded = {
        state_lib.path_name(p): str(x.sharding.spec)
        for p, x in jax.tree_util.tree_flatten_with_path(state.params)[0]
        if x.sharding.spec != jax.sharding.PartitionSpec()
    }
    metrics = loop.evaluate(list(config.evaluators), parts.cfg, parts.graphdef, state, tokenizer, mesh)
    print(
        json.dumps(
            {
                "devices": jax.device_count(),
                "mesh": dict(mesh.shape),
                "step": int(state.step),
                "sha256": digest.hexdigest(),
                "sharded": sharded,
                "eval": metrics,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))

"""Fit the tiny MLP under whatever devices XLA_FLAGS gives; save params, LRs and counts.

usage: multidevice_child.py OUT.npz [--resume STEP_DIR] [--ckpt DIR] [--on-device] [--k K]
                            [--process-id I --num-processes N --port P]

With --process-id, runs as one process of a jax.distributed CPU job on localhost (gloo
collectives); every process feeds its slice of each global batch.
"""

import argparse
import json

import jax
import numpy as np

from conftest import loss_fn, make_data, make_state
from flax_lr_callbacks import (ArrayDataset, LearningRateMonitor, ModelCheckpoint, OneCycle,
                               ReduceLROnPlateau, Trainer)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--resume")
    p.add_argument("--ckpt")
    p.add_argument("--on-device", action="store_true", help="ArrayDataset(on_device=True)")
    p.add_argument("--k", type=int, default=1, help="steps_per_dispatch")
    p.add_argument("--process-id", type=int)
    p.add_argument("--num-processes", type=int, default=2)
    p.add_argument("--port", type=int, default=12355)
    a = p.parse_args()
    if a.process_id is not None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f"localhost:{a.port}",
                                   num_processes=a.num_processes, process_id=a.process_id)
    d = make_data()
    monitor = LearningRateMonitor()
    callbacks = [OneCycle(0.3), ReduceLROnPlateau("val_loss", factor=0.5, patience=0,
                                                  threshold=0.9), monitor]
    if a.ckpt:
        callbacks.append(ModelCheckpoint(a.ckpt, every_n_steps=8, every_n_epochs=None,
                                         save_top_k=-1))
    trainer = Trainer(loss_fn, max_epochs=4, callbacks=callbacks, enable_progress_bar=False,
                      log_every_n_steps=4, steps_per_dispatch=a.k)
    state = trainer.fit(make_state(), ArrayDataset(d, 16, seed=1, on_device=a.on_device),
                        ArrayDataset(d, 48, shuffle=False),
                        resume_from=a.resume)
    leaves = jax.tree_util.tree_leaves(state.params)
    if jax.process_index() != 0:
        return
    np.savez(a.out, lr_steps=np.asarray(monitor.history["lr"][0]),
             lrs=np.asarray(monitor.history["lr"][1], np.float32),
             **{f"p{i}": np.asarray(x) for i, x in enumerate(leaves)})
    print(json.dumps({
        "devices": len(jax.devices()),
        "processes": jax.process_count(),
        "compiles": trainer.num_step_compiles + trainer.num_fused_compiles,
        "traces": trainer.num_step_traces + trainer.num_fused_traces,
        "reductions": [r["step"] for r in trainer.callbacks[1].reductions],
        "param_sharding": str(leaves[0].sharding),
        "val_loss": trainer.callback_metrics["val_loss"],
    }))


if __name__ == "__main__":
    main()

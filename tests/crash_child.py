"""A training run for the SIGKILL test in test_checkpoint.py (run as a subprocess).

usage: crash_child.py CKPT_DIR OUT.npz [--resume] [--pause-at N] [--slow-commit]

--pause-at N    print PAUSED after step N and wait to be killed
--slow-commit   print "COMMIT <step>" when orbax is about to rename a finished temporary
                checkpoint directory into place, then wait to be killed (a kill mid-save)
"""

import argparse
import asyncio
import time

import jax
import numpy as np

from conftest import loss_fn, make_data, make_state
from flax_lr_callbacks import (
    ArrayDataset,
    Callback,
    ModelCheckpoint,
    OneCycle,
    ReduceLROnPlateau,
    Trainer,
)


class Pause(Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, state):
        if trainer.global_step == self.step:
            trainer.trainer_state.lr_state.step.block_until_ready()
            print("PAUSED", flush=True)
            time.sleep(600)


def slow_commit():
    # orbax internals (pinned in constraints.txt): the atomic rename that commits a save
    from orbax.checkpoint._src.path import async_path

    rename = async_path.rename

    async def paused_rename(src, dst, *args, **kwargs):
        if str(dst).rstrip("/").split("/")[-1].isdigit():
            print(f"COMMIT {str(dst).rstrip('/').split('/')[-1]}", flush=True)
            if not str(dst).endswith("/4"):
                await asyncio.sleep(600)
        return await rename(src, dst, *args, **kwargs)

    async_path.rename = paused_rename


def main():
    p = argparse.ArgumentParser()
    p.add_argument("ckpt")
    p.add_argument("out")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--pause-at", type=int)
    p.add_argument("--slow-commit", action="store_true")
    a = p.parse_args()
    if a.slow_commit:
        slow_commit()
    d = make_data()
    callbacks = [OneCycle(0.3),
                 ReduceLROnPlateau("train_loss", factor=0.5, patience=0, threshold=0.5,
                                   check_on=5),
                 ModelCheckpoint(a.ckpt, every_n_steps=4, every_n_epochs=None, save_top_k=2)]
    if a.pause_at:
        callbacks.append(Pause(a.pause_at))
    trainer = Trainer(loss_fn, max_epochs=4, callbacks=callbacks, log_every_n_steps=3,
                      enable_progress_bar=False, seed=5)
    state = trainer.fit(make_state(), ArrayDataset(d, 16, seed=2),
                        ArrayDataset(d, 48, shuffle=False),
                        resume_from="latest" if a.resume else None)
    leaves = jax.tree_util.tree_leaves((state.params, state.opt_state))
    np.savez(a.out, **{f"{i:03d}": np.asarray(x) for i, x in enumerate(leaves)})


if __name__ == "__main__":
    main()

"""Invariant 4 for every kind of training data: each epoch trains on what that input means."""

import collections

import grain
import jax
import numpy as np
import pytest

from conftest import Crash, CrashAt, loss_fn, make_data, make_state
from flax_lr_callbacks import ArrayDataset, LRFinder, ModelCheckpoint, OneCycle, Trainer

N, B, SPE, EPOCHS = 48, 8, 6, 3  # 6 batches of 8 per pass, 3 epochs: 18 steps


def records(n=N):
    d = make_data(n)
    return [{"x": d["x"][i], "y": d["y"][i], "id": np.int32(i)} for i in range(n)]


def arrays(n=N):
    return make_data(n) | {"id": np.arange(n, dtype=np.int32)}


def recipe():
    """Grain's JAX tutorial recipe (an infinite pipeline)."""
    return grain.MapDataset.source(records()).seed(1).shuffle().repeat().batch(B)


def generator(passes=EPOCHS, n=N):
    ds = ArrayDataset(arrays(n), B, seed=5)
    for e in range(passes):
        batches = ds.for_epoch(e)
        yield from (batches[i] for i in range(len(batches)))


def data_loader():
    sampler = grain.samplers.IndexSampler(num_records=N, num_epochs=EPOCHS, shuffle=True,
                                          seed=0)
    return grain.DataLoader(data_source=records(), sampler=sampler,
                            operations=[grain.transforms.Batch(B)], worker_count=0)


# name: (fresh data, steps_per_epoch to pass, shuffled across epochs)
KINDS = {
    "array_dataset": (lambda: ArrayDataset(arrays(), B, seed=0), None, True),
    "map_dataset": (lambda: grain.MapDataset.source(records()).shuffle(seed=3).batch(B),
                    None, True),
    "map_to_iter": (lambda: grain.MapDataset.source(records()).shuffle(seed=3).batch(B)
                    .to_iter_dataset(), None, True),
    "map_repeat3": (lambda: grain.MapDataset.source(records()).shuffle(seed=3)
                    .repeat(EPOCHS).batch(B), None, True),
    "recipe_iter_dataset": (lambda: recipe().to_iter_dataset(), SPE, True),
    "data_loader": (data_loader, SPE, True),
    "recipe_iterator": (lambda: iter(recipe().to_iter_dataset()), SPE, True),
    "list": (lambda: list(generator(1)), None, False),
    "generator": (generator, SPE, True),
}


def fit(data, *, spe=None, epochs=EPOCHS, k=1, callbacks=(), resume_from=None, log_every=12):
    """`(trainer, state, seen)`; `seen` lists ``(epoch, ids)`` of every trained batch."""
    trainer = Trainer(loss_fn, max_epochs=epochs, steps_per_epoch=spe, callbacks=list(callbacks),
                      steps_per_dispatch=k, log_every_n_steps=log_every,
                      enable_progress_bar=False)
    seen = []
    dispatch = trainer._dispatch

    def recording(batches):
        seen.extend((trainer.current_epoch, np.asarray(b["id"]).tolist()) for b in batches)
        dispatch(batches)

    trainer._dispatch = recording
    state = trainer.fit(make_state(), data, resume_from=resume_from)
    return trainer, state, seen


def per_epoch(seen):
    ids = collections.defaultdict(list)
    for epoch, batch in seen:
        ids[epoch].extend(batch)
    return [ids[e] for e in sorted(ids)]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_example_once_per_epoch(kind):
    """Each epoch trains on every example exactly once, reshuffled where the input shuffles."""
    make, spe, shuffled = KINDS[kind]
    trainer, _, seen = fit(make(), spe=spe)
    epochs = per_epoch(seen)
    assert trainer.global_step == len(seen) == EPOCHS * SPE
    assert len(epochs) == EPOCHS
    for ids in epochs:
        assert sorted(ids) == list(range(N))
    assert (len({tuple(ids) for ids in epochs}) == EPOCHS) == shuffled
    assert trainer.num_step_traces == 1 and trainer.num_step_compiles == 1


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_mid_epoch_resume_is_bitwise(tmp_path, kind):
    """A crash at step 9 and a resume from step 8 (mid epoch 1) reproduce the full run."""
    make, spe, _ = KINDS[kind]
    _, full, full_seen = fit(make(), spe=spe)
    with pytest.raises(Crash):
        fit(make(), spe=spe, callbacks=[ModelCheckpoint(tmp_path, every_n_steps=4,
                                                        every_n_epochs=None), CrashAt(9)])
    trainer, resumed, seen = fit(
        make(), spe=spe, resume_from=tmp_path,
        callbacks=[ModelCheckpoint(tmp_path, every_n_steps=4, every_n_epochs=None)])
    assert trainer.resumed_from.endswith("/8")
    assert seen == full_seen[8:]
    for a, b in zip(jax.tree_util.tree_leaves(resumed), jax.tree_util.tree_leaves(full)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert trainer.num_step_traces == 1


@pytest.mark.parametrize("kind", ["generator", "recipe_iterator", "map_to_iter",
                                  "array_dataset"])
def test_finder_then_fit_trains_every_batch(kind):
    """The LR sweep reads its own batches or hands them back: training sees all of them."""
    make, spe, _ = KINDS[kind]
    _, _, plain = fit(make(), spe=spe)
    trainer, _, seen = fit(make(), spe=spe, callbacks=[
        LRFinder(1e-4, 1.0, num_steps=12, plot_path=None), OneCycle(max_lr=None)])
    assert len(trainer.callbacks[0].result.lrs) > 0
    assert seen == plain
    assert trainer.num_step_traces == 1


def test_finder_then_fit_on_a_40_batch_generator():
    """The issue's case: a 30-step sweep, then 40 training steps on all 40 batches."""
    gen = generator(passes=1, n=40 * B)
    trainer, _, seen = fit(gen, spe=40, epochs=1, log_every=10, callbacks=[
        LRFinder(1e-4, 1.0, num_steps=30, plot_path=None), OneCycle(max_lr=None)])
    assert trainer.global_step == len(seen) == 40
    assert sorted(i for _, ids in seen for i in ids) == list(range(320))


def test_sweep_longer_than_a_one_shot_stream_is_refused():
    """A 30-step sweep on an 18-batch generator says where it ran out."""
    with pytest.raises(ValueError, match=r"train_data ran out after 18 batches during the LR"):
        fit(generator(), spe=SPE, callbacks=[LRFinder(num_steps=30, plot_path=None)])


def test_one_shot_generator_running_out_warns_and_stops():
    """8 batches, steps_per_epoch=8, 2 epochs: all 8 train, then a warning names 8 of 16."""
    with pytest.warns(UserWarning, match=r"ran out in epoch 1 after 0 of its 8 batches: "
                                         r"8 of the 16 planned steps ran"):
        trainer, _, seen = fit(generator(passes=1, n=64), spe=8, epochs=2,
                               callbacks=[OneCycle(0.2)], log_every=8)
    assert sorted(i for _, ids in seen for i in ids) == list(range(64))
    assert trainer.global_step == 8 and trainer.should_stop


def test_steps_per_epoch_beyond_the_data_is_refused():
    """steps_per_epoch=20 on 8 batches raises at fit start, naming both numbers."""
    with pytest.raises(ValueError, match=r"steps_per_epoch=20 exceeds the 8 batches"):
        fit(ArrayDataset(arrays(64), B), spe=20)
    with pytest.raises(ValueError, match=r"repeats without end.*steps_per_epoch"):
        fit(recipe())
    with pytest.raises(ValueError, match=r"holds 6 batches, fewer than the 12 steps"):
        fit(grain.MapDataset.source(records()).repeat(1).batch(B), spe=6, epochs=2)


def test_short_batch_in_a_fused_group_runs_single_steps():
    """60 examples in batches of 8 keep a short 8th batch; with K=4 it runs alone."""
    data = ArrayDataset(arrays(60), B, drop_remainder=False, seed=0)
    trainer, _, seen = fit(data, k=4, log_every=4)
    for ids in per_epoch(seen):
        assert sorted(ids) == list(range(60))
    assert trainer.global_step == 3 * 8
    assert trainer.num_fused_traces == 1 and trainer.num_fused_compiles == 1
    assert trainer.num_step_traces == 2  # one per shape: full batches and the short one


def test_iter_dataset_repeating_its_shuffle_warns():
    """A shuffling pipeline that restarts identically each epoch is named in a warning."""
    data = grain.MapDataset.source(records()).shuffle(seed=0).to_iter_dataset().batch(B)
    with pytest.warns(UserWarning, match=r"shuffles but restarts with the same order"):
        trainer, _, seen = fit(data, spe=SPE)
    epochs = per_epoch(seen)
    assert all(sorted(ids) == list(range(N)) for ids in epochs)
    assert epochs[0] == epochs[1] == epochs[2]

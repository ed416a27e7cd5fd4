"""Finding, reading and writing injected hyperparameters."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from compiles import count_compiles

from flax_lr_callbacks import hyperparams as hp
from flax_lr_callbacks import injectable

PARAMS = {"w": jnp.ones(3), "v": jnp.ones(2)}


def test_single_group_is_default_and_read_write_roundtrip():
    """A plain injected optimizer is one 'default' group; writes keep float32."""
    s = injectable(optax.sgd, learning_rate=0.1, momentum=0.9).init(PARAMS)
    assert list(hp.find_groups(s)) == ["default"]
    s2 = hp.set_hyperparam(s, "learning_rate", 0.5)
    assert hp.get_hyperparam(s2, "learning_rate") == pytest.approx(0.5)
    assert hp.get_hyperparam(s2, "learning_rate").dtype == jnp.float32
    assert hp.get_hyperparam(s, "learning_rate") == pytest.approx(0.1)  # original untouched


def test_chain_with_inject_inside():
    """Injected node inside optax.chain is found and written."""
    tx = optax.chain(optax.clip_by_global_norm(1.0), injectable(optax.adam, learning_rate=1e-3))
    s = tx.init(PARAMS)
    assert set(hp.get_hyperparams(s)["default"]) >= {"learning_rate", "b1", "b2"}
    s2 = hp.set_hyperparam(s, "b1", 0.5)
    assert hp.get_hyperparam(s2, "b1") == pytest.approx(0.5)


def test_multi_transform_groups_by_label():
    """multi_transform labels become groups; writes go to one group only."""
    tx = optax.multi_transform(
        {"body": injectable(optax.sgd, learning_rate=0.1),
         "head": injectable(optax.adam, learning_rate=0.01)},
        {"w": "body", "v": "head"},
    )
    s = tx.init(PARAMS)
    assert sorted(hp.find_groups(s)) == ["body", "head"]
    s2 = hp.set_hyperparams(s, {"head": {"learning_rate": 0.5}})
    got = hp.get_hyperparams(s2)
    assert got["head"]["learning_rate"] == pytest.approx(0.5)
    assert got["body"]["learning_rate"] == pytest.approx(0.1)
    with pytest.raises(TypeError, match="several groups"):
        hp.get_hyperparam(s2, "learning_rate")
    assert hp.get_hyperparam(s2, "learning_rate", group="body") == pytest.approx(0.1)


def test_multisteps_inner_state_is_found():
    """MultiSteps wraps the injected state; it is still found and writable."""
    tx = optax.MultiSteps(injectable(optax.sgd, learning_rate=0.1), every_k_schedule=4)
    s = tx.init(PARAMS)
    s2 = hp.set_hyperparam(s, "learning_rate", 0.3)
    assert hp.get_hyperparam(s2, "learning_rate") == pytest.approx(0.3)


def test_write_under_jit_keeps_dtype_and_is_applied():
    """Writing inside jit with a traced float64/weak value keeps float32; update uses it."""
    tx = injectable(optax.sgd, learning_rate=0.1)
    s = tx.init(PARAMS)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(s, lr):
        s = hp.set_hyperparam(s, "learning_rate", lr)
        updates, s = tx.update({"w": jnp.ones(3), "v": jnp.ones(2)}, s)
        return updates, s

    updates, s2 = step(s, 0.25)
    np.testing.assert_allclose(updates["w"], -0.25 * np.ones(3))
    assert hp.get_hyperparam(s2, "learning_rate").dtype == jnp.float32
    with count_compiles() as compiles:
        step(s2, 0.5)  # a traced LR: neither a retrace (chex) nor a new executable
    assert compiles == []


def test_not_injected_error_says_how_to_fix():
    """A plain optax optimizer gets a TypeError with the injectable / inject_hyperparams
    recipes (float32 slots)."""
    s = optax.sgd(0.1).init(PARAMS)
    with pytest.raises(TypeError, match=r"injectable\(optax.sgd, learning_rate=0.1\) or optax"
                                        r".inject_hyperparams\(optax.sgd, hyperparam_dtype="
                                        r"jnp.float32\)\(learning_rate=0.1\)"):
        hp.get_hyperparams(s)


def test_unknown_name_lists_available():
    """Targeting a name the optimizer lacks lists what it has."""
    s = injectable(optax.sgd, learning_rate=0.1).init(PARAMS)
    with pytest.raises(TypeError, match=r"no injectable 'b1' \(injected: \['learning_rate'\]\)"):
        hp.check_targets(s, ["b1"], owner="OneCycle")


def test_scheduled_hyperparam_target_raises():
    """optax ignores writes to scheduled hyperparameters; targeting one is a TypeError."""
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=optax.linear_schedule(0.1, 0.0, 10))
    s = tx.init(PARAMS)
    with pytest.raises(TypeError, match=r"given a schedule.*LRSchedule"):
        hp.check_targets(s, ["learning_rate"], owner="LRSchedule")
    with pytest.raises(TypeError, match="given a schedule"):
        hp.set_hyperparam(s, "learning_rate", 0.3)


def test_injectable_makes_floats_and_static_args():
    """Ints become float32 hyperparameters; bools and None stay static."""
    tx = injectable(optax.sgd, learning_rate=1, momentum=0.9, nesterov=True)
    s = tx.init(PARAMS)
    values = hp.get_hyperparams(s)["default"]
    assert values["learning_rate"].dtype == jnp.float32
    assert "nesterov" not in values
    with pytest.raises(TypeError, match=r"learning_rate was given a schedule.*LRSchedule"):
        injectable(optax.sgd, learning_rate=optax.constant_schedule(0.1))


def test_bf16_params_keep_float32_hyperparams():
    """With bf16 params, b2=0.999 must not round to 1.0 (the default dtype trap)."""
    params = {"w": jnp.ones(3, jnp.bfloat16)}
    s = injectable(optax.adam, learning_rate=1e-3, b2=0.999).init(params)
    assert float(hp.get_hyperparam(s, "b2")) == pytest.approx(0.999, abs=1e-6)


def test_a_low_precision_slot_is_refused_with_the_fix():
    """optax infers the hyperparameter dtype from bfloat16 params: an LR rounded to 3 digits
    and Adam's b2=0.999 stored as 1.0. Writing such a slot is a TypeError saying how to build
    the optimizer instead; injectable's float32 slots work."""
    import jax
    import jax.numpy as jnp

    from flax_lr_callbacks import LRCallbacks, OneCycle

    params = {"w": jnp.ones((3,), jnp.bfloat16)}
    low = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3).init(params)
    assert low.hyperparams["learning_rate"].dtype == jnp.bfloat16
    callbacks = LRCallbacks([OneCycle(0.01)], steps_per_epoch=4, max_epochs=2)
    with pytest.raises(TypeError, match=r"OneCycle.*writes 'learning_rate' \(group 'default'\)"
                                        r".*stores it as bfloat16.*injectable"):
        callbacks.init(low)
    ok = injectable(optax.adam, learning_rate=1e-3).init(params)
    assert jax.tree_util.tree_leaves(callbacks.init(ok))


def test_an_unknown_group_is_named():
    """groups=("head", "bakbone"): the typo is an error listing the optimizer's groups (it
    used to leave that group's LR alone)."""
    from flax_lr_callbacks import LRCallbacks, LRSchedule

    tx = optax.multi_transform(
        {"head": injectable(optax.sgd, learning_rate=0.1),
         "backbone": injectable(optax.adam, learning_rate=0.01)},
        {"w": "head", "b": "backbone"})
    opt_state = tx.init({"w": jnp.ones(2), "b": jnp.ones(2)})
    callbacks = LRCallbacks([LRSchedule(lambda s: 0.5 + 0.0 * s, groups=("head", "bakbone"))],
                            steps_per_epoch=2, max_epochs=1)
    with pytest.raises(ValueError, match=r"groups \['bakbone'\] are not in the optimizer; its "
                                         r"groups are \['backbone', 'head'\]"):
        callbacks.init(opt_state)


def test_an_integer_hyperparameter_nothing_writes_is_fine():
    """optax keeps an int (weight_decay=0) as int32: only slots a callback writes must be
    float32, so this trains."""
    from conftest import loss_fn, make_data, make_state

    from flax_lr_callbacks import ArrayDataset, OneCycle, Trainer

    tx = optax.inject_hyperparams(optax.adamw, hyperparam_dtype=jnp.float32)(
        learning_rate=1e-3, weight_decay=0)
    trainer = Trainer(loss_fn, max_epochs=1, callbacks=[OneCycle(0.05)],
                      enable_progress_bar=False)
    trainer.fit(make_state(tx), ArrayDataset(make_data(32), 16))
    assert trainer.global_step == 2

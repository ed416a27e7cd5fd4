"""Every public constructor and function refuses bad arguments at once, naming the argument.

The table below gives, per public callable, the valid arguments it is built with and a list of
bad values for each argument. `test_table_covers_every_argument` enumerates the public API and
the signatures, so an argument (or a class) added without bad values here fails the suite.
"""

import inspect
import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import flax_lr_callbacks as flc

NAN, INF = math.nan, math.inf


def _loss(params, batch):
    return jnp.sum(params["w"]) * 0.0


def _schedule(count):
    return 0.1 * jnp.ones_like(count, jnp.float32)


# callable -> (valid kwargs, {argument: [bad values]})
TABLE = {
    "Trainer": (dict(loss_fn=_loss), {
        "loss_fn": ["loss", None],
        "max_epochs": [0, -1, 1.5, "3", True],
        "max_steps": [0, 2.5, "10", False],
        "steps_per_epoch": [0, 1.5, "5"],
        "callbacks": ["OneCycle", 3, [object()], [flc.OneCycle]],
        "logger": ["runs/x", 3, object()],
        "log_every_n_steps": [0, None, 2.0, "50"],
        "seed": [None, 1.5, "abc", -1, True],
        "eval_fn": ["acc", 3],
        "enable_progress_bar": ["yes", 1, None],
        "mesh": ["bogus", 3],
        "data_axis": [3, "", None],
        "steps_per_dispatch": [0, 1.5, None],
        "nan_policy": ["raise", None, True],
    }),
    "EarlyStopping": (dict(), {
        "monitor": [3, ""],
        "min_delta": [NAN, "0.1"],
        "patience": [-1, 1.5, "3"],
        "mode": ["minimum"],
        "check_on": ["step", 0, True],
        "stopping_threshold": [NAN, "0.1"],
        "divergence_threshold": [NAN, "10"],
        "check_finite": ["yes"],
        "baseline": [NAN, "0.5"],
        "start_from_epoch": [-1, 1.5],
        "strict": ["yes"],
        "verbose": ["yes"],
    }),
    "OneCycle": (dict(max_lr=0.1), {
        "max_lr": [0.0, -0.1, NAN, INF, "0.1", True],
        "total_steps": [1, 2.5, "100"],
        "pct_start": [0.0, 1.0, NAN, "0.3"],
        "anneal_strategy": ["cosine", None],
        "div_factor": [0.0, -1.0, "25"],
        "final_div_factor": [0.0, NAN],
        "three_phase": ["no", 1],
        "cycle_momentum": ["no", 0, None],
        "base_momentum": [-0.1, 0.99, "0.85"],
        "max_momentum": [1.0, -0.5, "0.95"],
        "unit": ["steps", None],
        "groups": ["default", 3, [1]],
    }),
    "CyclicLR": (dict(base_lr=0.01, max_lr=0.1), {
        "base_lr": [-0.01, NAN, "0.01"],
        "max_lr": [0.001, NAN, "0.1"],
        "step_size_up": [0, 2.5, "10"],
        "step_size_down": [0, "10"],
        "mode": ["triangle", 1],
        "gamma": [0.0, 1.5, NAN],
        "scale_fn": ["linear", 3],
        "scale_mode": ["cycles"],
        "cycle_momentum": ["no"],
        "base_momentum": [-0.1, "0.8"],
        "max_momentum": [1.0, "0.9"],
        "unit": ["epochs"],
        "groups": ["default"],
    }),
    "CosineRestarts": (dict(t_0=10), {
        "t_0": [0, 1.5, "10"],
        "t_mult": [0.5, NAN, "2"],
        "eta_min": [-1.0, NAN],
        "peak_decay": [0.0, 1.5],
        "max_cycles": [0, "3"],
        "warmup_steps": [-1, 1.5],
        "base_lr": [-0.1, NAN, "0.1"],
        "unit": ["iter"],
        "groups": ["default"],
    }),
    "LRSchedule": (dict(schedule=_schedule), {
        "schedule": [0.1, "cosine"],
        "unit": ["steps"],
        "hyperparam": [3, ""],
        "groups": ["default", [3]],
    }),
    "Warmup": (dict(schedule=flc.OneCycle(0.1), warmup_steps=5), {
        "schedule": [_schedule, None],
        "warmup_steps": [0, 2.5, "5"],
        "start_value": [-0.1, NAN],
        "unit": ["steps"],
        "hyperparam": [3, ""],
    }),
    "Sequential": (dict(schedules=[flc.OneCycle(0.1), flc.OneCycle(0.01)], boundaries=[5]), {
        "schedules": [[flc.OneCycle(0.1)], [_schedule, _schedule]],
        "boundaries": [[0], [2.5], [5, 6]],
        "unit": ["steps"],
    }),
    "ReduceLROnPlateau": (dict(), {
        "monitor": [3, ""],
        "mode": ["minimum"],
        "factor": [0.0, 1.0, 2.0, NAN],
        "patience": [-1, 1.5],
        "threshold": [-1e-4, NAN],
        "threshold_mode": ["relative"],
        "cooldown": [-1, 0.5],
        "min_lr": [-1.0, NAN],
        "eps": [-1.0],
        "check_on": ["step", 0, True],
        "hyperparam": [3],
        "strict": ["yes"],
        "groups": ["default"],
    }),
    "SmoothedPlateau": (dict(), {
        "monitor": [3],
        "mode": ["maximum"],
        "factor": [1.5],
        "patience": [-1],
        "threshold": [-1.0],
        "threshold_mode": ["abs_"],
        "cooldown": [-2],
        "min_lr": [-0.1],
        "beta": [1.0, -0.1],
        "hyperparam": [None],
        "groups": ["default"],
    }),
    "GradNormGuard": (dict(), {
        "threshold": [1.0, 0.5, NAN],
        "factor": [0.0, 1.0],
        "recovery_steps": [0, 1.5],
        "warmup_steps": [0],
        "beta": [1.0],
        "min_scale": [0.0, 2.0],
        "hyperparam": [3],
        "groups": ["default"],
    }),
    "LRFinder": (dict(), {
        "min_lr": [0.0, -1e-7, NAN, "1e-7"],
        "max_lr": [1e-8, INF],
        "num_steps": [1, 10.5, "100"],
        "mode": ["exp"],
        "smoothing": [1.0, -0.1],
        "diverge_threshold": [1.0, 0.5],
        "suggestion": ["best", None],
        "apply_to": ["OneCycle", 3],
        "plot_path": [3],
    }),
    "LearningRateMonitor": (dict(), {
        "logging_interval": ["batch"],
        "log_momentum": ["no", None],
        "log_weight_decay": ["no"],
    }),
    "ProgressBar": (dict(), {"leave": ["yes"]}),
    "ModelCheckpoint": (dict(directory="/tmp/flc-args-ckpt"), {
        "directory": [None, 3],
        "every_n_steps": [0, 1.5, "10"],
        "every_n_epochs": [0, "1"],
        "save_top_k": [-2, 1.5],
        "monitor": [3],
        "mode": ["maximum"],
        "save_last": ["no"],
        "async_save": ["no"],
    }),
    "TensorBoardLogger": (dict(save_dir="/tmp/flc-args-tb"), {
        "save_dir": [None, 3],
        "name": [3],
        "version": [-1, 1.5],
        "flush_secs": [0, -1, INF, NAN, "10"],
        "background": ["no"],
    }),
    "CSVLogger": (dict(save_dir="/tmp/flc-args-csv"), {
        "save_dir": [None],
        "name": [3],
        "version": [-1],
        "flush_logs_every_n_steps": [0, 1.5],
    }),
    "LRCallbacks": (dict(callbacks=[flc.OneCycle(0.1)], steps_per_epoch=10, max_epochs=2), {
        "callbacks": ["OneCycle", [flc.LRFinder()]],
        "steps_per_epoch": [0, None, 2.5],
        "max_epochs": [0, "2"],
        "total_steps": [0, 1.5],
    }),
    "ArrayDataset": (dict(arrays={"x": np.zeros((8, 2))}, batch_size=4), {
        "arrays": [None, {"x": np.zeros((8, 2)), "y": np.zeros((7,))}],
        "batch_size": [0, 2.5, 9],
        "shuffle": ["yes"],
        "seed": [1.5, "0"],
        "drop_remainder": ["no"],
        "on_device": ["yes", 1],
        "process_index": [-1, 1],
        "process_count": [0],
    }),
    "injectable": (dict(factory=optax.sgd, learning_rate=0.1), {
        "factory": ["sgd"],
        "static_args": ["momentum"],
        "learning_rate": ["0.1", -0.1, NAN, INF],
    }),
    "preview": (dict(callbacks=[flc.OneCycle(0.1)], steps_per_epoch=10, max_epochs=2), {
        "callbacks": ["OneCycle"],
        "steps_per_epoch": [0, 1.5],
        "max_epochs": [0, "2"],
        "path": [3],
        "max_steps": [0],
        "hparams": [3],
    }),
}

# Public names whose arguments are not user input to validate (results and state containers
# the library builds itself), or functions of states whose checks live elsewhere.
NOT_INPUT = {"LRFinderResult", "NNXTrainState", "LoggerCollection", "get_hyperparam",
             "get_hyperparams", "set_hyperparam", "set_hyperparams", "apply_lr", "observe_lr",
             "load_fashion_mnist", "LoggerError", "NonFiniteLossError"}
# Arguments that take any value (e.g. any callable or pytree) or that **kwargs stand for.
ANY_VALUE = {("injectable", "hparams")}


def _public_callables():
    for name in flc.__all__:
        obj = getattr(flc, name)
        if (inspect.isclass(obj) and "__init__" in vars(obj)) or inspect.isfunction(obj):
            yield name, obj


def test_table_covers_every_argument():
    missing = []
    for name, obj in _public_callables():
        if name in NOT_INPUT:
            continue
        if name not in TABLE:
            missing.append(name)
            continue
        for arg in inspect.signature(obj).parameters:
            if arg not in TABLE[name][1] and (name, arg) not in ANY_VALUE:
                missing.append(f"{name}({arg}=...)")
    assert not missing, f"no bad values listed for {missing}"


CASES = [(name, arg, bad) for name, (_, args) in TABLE.items()
         for arg, bads in args.items() for bad in bads]


@pytest.mark.parametrize("name,arg,bad", CASES,
                         ids=[f"{n}-{a}-{b!r}"[:60] for n, a, b in CASES])
def test_bad_argument_is_refused_naming_it(name, arg, bad):
    valid, _ = TABLE[name]
    kwargs = dict(valid) | {arg: bad}
    with pytest.raises((TypeError, ValueError)) as info:
        getattr(flc, name)(**kwargs)
    message = str(info.value)
    # the message names the argument (a Sequential boundary or a list entry may be named
    # by its index, e.g. boundaries[i] / callbacks[0])
    assert arg in message, f"{name}({arg}={bad!r}): {type(info.value).__name__}: {message}"


@pytest.mark.parametrize("name", sorted(TABLE))
def test_valid_arguments_are_accepted(name):
    valid, _ = TABLE[name]
    getattr(flc, name)(**valid)


def test_numpy_and_jax_scalars_are_numbers():
    cb = flc.OneCycle(max_lr=np.float32(0.1), total_steps=np.int64(100),
                      pct_start=jnp.asarray(0.25))
    assert type(cb.max_lr) is float and type(cb.total_steps) is int
    trainer = flc.Trainer(_loss, max_epochs=np.int64(3), seed=np.int32(7),
                          log_every_n_steps=jnp.asarray(10), enable_progress_bar=np.bool_(False))
    assert trainer.max_epochs == 3 and type(trainer.max_epochs) is int
    assert trainer.seed == 7 and trainer.log_every_n_steps == 10
    flc.injectable(optax.sgd, learning_rate=np.float64(0.1))


def test_a_float_array_is_not_a_count():
    with pytest.raises(TypeError, match="max_epochs"):
        flc.Trainer(_loss, max_epochs=np.float32(3.0))


def test_one_callback_or_none_is_accepted_like_lightning():
    one = flc.OneCycle(0.1)
    assert one in flc.Trainer(_loss, callbacks=one).callbacks
    assert len(flc.Trainer(_loss, callbacks=None, enable_progress_bar=False).callbacks) == 0


def test_summary_no_silent_acceptance(capsys):
    """Counts for the record: every bad input in the table is refused with a clear error."""
    tried = clear = silent = 0
    for name, arg, bad in CASES:
        tried += 1
        valid, _ = TABLE[name]
        try:
            getattr(flc, name)(**(dict(valid) | {arg: bad}))
            silent += 1
        except (TypeError, ValueError) as e:
            clear += arg in str(e)
    with capsys.disabled():
        print(f"\nbad inputs tried: {tried}, clear errors: {clear}, silent acceptances: {silent}")
    assert silent == 0 and clear == tried

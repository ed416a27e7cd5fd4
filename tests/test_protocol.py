"""The callback contract: every hook forwarded by composites, clear rule errors, and the rule
for attributes (frozen at trace time) vs device state (changes without a retrace)."""

import inspect
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
import pytest
from conftest import loss_fn

from flax_lr_callbacks import Callback, LRSchedule, Sequential, Trainer, Warmup
from flax_lr_callbacks.callbacks.base import HOST_HOOKS
from flax_lr_callbacks.callbacks.composite import Composite

LR_KEY = "hp/default/learning_rate"


def quiet(**kw):
    return Trainer(loss_fn, enable_progress_bar=False, **kw)


def test_host_hooks_lists_every_hook_of_callback():
    """HOST_HOOKS names every on_* method of Callback and teardown, nothing else."""
    hooks = {n for n, _ in inspect.getmembers(Callback, inspect.isfunction)
             if n.startswith("on_") or n == "teardown"}
    assert hooks == set(HOST_HOOKS)


class HookRecorder(LRSchedule):
    """A schedule (so it can sit in a composite) that records every hook it receives."""

    def __init__(self):
        super().__init__(optax.constant_schedule(0.1))
        self.calls = []


for _hook in HOST_HOOKS:
    def _record(self, trainer, state, *args, _name=_hook):
        self.calls.append(_name)
    setattr(HookRecorder, _hook, _record)


@pytest.mark.parametrize("hook", HOST_HOOKS)
def test_composite_forwards_every_hook(hook):
    """Warmup and Sequential pass each host hook (and its extra arguments) to their children."""
    assert getattr(Composite, hook) is not getattr(Callback, hook)
    a, b = HookRecorder(), HookRecorder()
    args = ({"step": []},) if hook == "on_log" else ()
    for composite in (Warmup(a, warmup_steps=2), Sequential([a, b], boundaries=[3])):
        a.calls.clear(), b.calls.clear()
        getattr(composite, hook)(None, None, *args)
        assert a.calls == [hook]
        assert b.calls == ([hook] if isinstance(composite, Sequential) else [])


def test_composite_children_get_on_log_and_teardown_in_a_fit(data, state):
    """In a real fit, a child of Warmup receives on_log and teardown."""
    child = HookRecorder()
    quiet(max_epochs=1, log_every_n_steps=3, callbacks=[Warmup(child, 2)]).fit(state, *data)
    assert child.calls.count("on_log") == 2 and child.calls[-1] == "teardown"


class Forgetful(Callback):
    sets = ("learning_rate",)

    def __init__(self, mode):
        self.mode = mode

    def init_state(self, plan, hparams):
        return ScaleState(jnp.float32(1.0))

    def rule(self, ctx, hparams, state):
        if self.mode == "no_state":
            return hparams
        if self.mode == "shape":
            return hparams, ScaleState(jnp.zeros((2,), jnp.float32))
        if self.mode == "tuple":
            return hparams, (state.scale,)
        if self.mode == "new_name":
            return {"default": {**hparams["default"], "lr": state.scale}}, state
        return None


@pytest.mark.parametrize("mode, match", [
    ("no_state", r"Forgetful.rule must return \(hparams, state\), got dict"),
    ("none", r"Forgetful.rule must return \(hparams, state\), got NoneType"),
    ("shape", r"Forgetful.rule changed a state leaf from float32\[\] to float32\[2\]"),
    ("tuple", r"Forgetful.rule returned a state of structure"),
    ("new_name", r"Forgetful.rule returned hyperparameters .*'lr'"),
])
def test_rule_errors_name_the_callback(mode, match, data, state):
    """A rule that returns the wrong thing fails at trace time with the callback's name."""
    with pytest.raises(TypeError, match=match):
        quiet(max_epochs=1, callbacks=[Forgetful(mode)]).fit(state, *data)


class ScaleState(NamedTuple):
    scale: jax.Array


class Scaler(Callback):
    """Multiplies the LR by a device-state scale and by an attribute."""

    scales = ("learning_rate",)

    def __init__(self):
        self.attribute = 1.0

    def init_state(self, plan, hparams):
        return ScaleState(jnp.float32(1.0))

    def rule(self, ctx, hparams, state):
        for g in self.target_groups(hparams, "learning_rate"):
            lr = hparams[g]["learning_rate"]
            hparams[g]["learning_rate"] = lr * state.scale * self.attribute
        return hparams, state


class ChangeAtEpochEnd(Callback):
    def __init__(self, target, how):
        self.target, self.how, self.lrs = target, how, []

    def on_log(self, trainer, state, history):
        self.lrs += [float(v) for v in history[LR_KEY]]

    def on_train_epoch_end(self, trainer, state):
        if self.how == "attribute":
            self.target.attribute = 0.5
        else:
            trainer.update_callback_state(self.target, scale=0.5)


@pytest.mark.parametrize("how", ["attribute", "device_state"])
def test_attributes_are_frozen_device_state_is_not(how, data, state):
    """Changing an attribute a rule reads does nothing after tracing; writing device state
    changes the LR from the next step, with no retrace in either case."""
    scaler = Scaler()
    probe = ChangeAtEpochEnd(scaler, how)
    trainer = quiet(max_epochs=2, log_every_n_steps=6, callbacks=[scaler, probe])
    trainer.fit(state, *data)
    assert trainer.num_step_traces == 1 and trainer.num_step_compiles == 1
    assert probe.lrs[:6] == pytest.approx([0.1] * 6)
    expected = 0.1 if how == "attribute" else 0.05
    assert probe.lrs[6:] == pytest.approx([expected] * 6)


class BareState(Callback):
    scales = ("learning_rate",)

    def init_state(self, plan, hparams):
        return jnp.float32(1.0)

    def rule(self, ctx, hparams, state):
        return hparams, state

    def on_fit_start(self, trainer, state):
        trainer.update_callback_state(self, scale=0.5)


def test_bare_array_state_write_is_a_clear_error(data, state):
    """Writing a field into a bare-array state names the callback and says what to return."""
    with pytest.raises(TypeError, match=r"BareState has a device state of type .*Array.*"
                                        r"return a NamedTuple from init_state"):
        quiet(max_epochs=1, callbacks=[BareState()]).fit(state, *data)


def test_trainer_and_lrcallbacks_satisfy_the_host_contract(state):
    """Both hosts implement `HostContext`; counters live in one `Progress` object."""
    from flax_lr_callbacks import LRCallbacks
    from flax_lr_callbacks.contract import HostContext, Progress

    trainer = quiet(max_epochs=1)
    lrc = LRCallbacks([], steps_per_epoch=3, max_epochs=2)
    for host in (trainer, lrc):
        assert isinstance(host, HostContext)
        host.global_step = 7
        assert host.progress.global_step == 7 and isinstance(host.progress, Progress)
    assert lrc.plan == (3, 6, 2, None)  # validates: not known in a custom loop
    p = Progress(global_step=3, window_start=2, resuming=True)
    q = Progress()
    q.load(p.as_dict())
    assert q == p
    with pytest.raises(KeyError, match="no field 'step'"):
        q.load({"step": 1})


class StopAt(Callback):
    def on_train_batch_end(self, trainer, state):
        if trainer.global_step == 4:
            trainer.request_stop()


def test_request_stop_ends_the_fit(data, state):
    """A hook's `request_stop()` ends the fit after the current step."""
    trainer = quiet(max_epochs=3, callbacks=[StopAt()])
    trainer.fit(state, *data)
    assert trainer.global_step == 4


def test_no_module_outside_the_trainer_reads_its_private_fields():
    """Callbacks, checkpoints and the LR sweep use only the public contract."""
    import pathlib
    import re

    import flax_lr_callbacks

    root = pathlib.Path(flax_lr_callbacks.__file__).parent
    offenders = [f"{p.relative_to(root)}:{m.group(0)}" for p in root.rglob("*.py")
                 if p.name != "trainer.py"
                 for m in re.finditer(r"trainer\.(_\w+)", p.read_text())]
    assert offenders == []


def test_no_import_cycles():
    """scripts/import_cycles.py finds no cycle between the package's modules."""
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).parent.parent
    out = subprocess.run([sys.executable, "scripts/import_cycles.py"], cwd=root,
                         capture_output=True, text=True)
    assert out.returncode == 0 and " 0 import cycles" in out.stdout, out.stdout


def _readme_blocks():
    import pathlib
    import re

    text = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    section = text[text.index("## Write your own callback"):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_write_your_own_callback_runs(data, state):
    """The README section's code runs: warmup-then-exponential values, the spike guard in a
    fit with one compile, and the shipped callbacks' snippet."""
    import numpy as np
    import flax_lr_callbacks as flc
    blocks = _readme_blocks()
    assert len(blocks) == 3
    env = {"Callback": Callback, "jnp": jnp, "jax": jax, "NamedTuple": NamedTuple,
           "loss_fn": loss_fn, **{n: getattr(flc, n) for n in flc.__all__}}
    for block in blocks:
        exec(block, env)
    assert sum(len(line) > 0 for line in blocks[0].splitlines()) == 13
    values = env["WarmupThenExp"](0.1, 4, 0.5).curve(7)["learning_rate"]
    np.testing.assert_allclose(values, [0.025, 0.05, 0.075, 0.1, 0.05, 0.025, 0.0125],
                               rtol=1e-6)
    trainer = quiet(max_epochs=2, callbacks=[env["WarmupThenExp"](0.1, 4, 0.9),
                                             env["SpikeGuard"]()])
    trainer.fit(state, *data)
    assert trainer.num_step_traces == 1 and trainer.num_step_compiles == 1
    assert isinstance(env["trainer"], Trainer)

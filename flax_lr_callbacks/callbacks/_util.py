"""Small helpers shared by the schedule callbacks: validation, clocks, writing values."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from flax_lr_callbacks.callbacks.base import StepContext
from flax_lr_callbacks.hyperparams import Hyperparams
from flax_lr_callbacks.validation import check_choice, check_number  # noqa: F401 (re-export)

UNITS = ("step", "epoch")


def clock(ctx: StepContext, unit: str) -> jax.Array:
    """The count a schedule reads: the step, or the epoch for ``unit='epoch'``."""
    return ctx.step if unit == "step" else ctx.epoch


def horizon(total_steps: int, steps_per_epoch: int, unit: str) -> int:
    """Planned length of a run in `unit`s."""
    return total_steps if unit == "step" else -(-total_steps // steps_per_epoch)


def to_steps(value: Any, ctx: StepContext, unit: str) -> jax.Array:
    """A count in `unit`s as steps (epochs times steps per epoch)."""
    value = jnp.asarray(value, jnp.int32)
    return value if unit == "step" else value * ctx.steps_per_epoch


def shift_context(ctx: StepContext, offset: jax.Array, length: jax.Array) -> StepContext:
    """The context a child schedule sees when it starts `offset` steps in, for `length` steps."""
    step = jnp.maximum(ctx.step - offset, 0)
    return StepContext(step=step, epoch=step // ctx.steps_per_epoch,
                       steps_per_epoch=ctx.steps_per_epoch, total_steps=length)


def write(hparams: Hyperparams, groups: Sequence[str], name: str, value: Any) -> Hyperparams:
    """Sets ``hparams[g][name] = value`` (float32) for each group in `groups`."""
    value = jnp.asarray(value, jnp.float32)
    for g in groups:
        hparams[g][name] = value
    return hparams


def momentum_names(hparams: Hyperparams, groups: Sequence[str] | None) -> dict[str, str]:
    """Per group, the injected name that plays momentum: ``momentum`` (SGD) or ``b1`` (Adam)."""
    out = {}
    for g in (hparams if groups is None else groups):
        names = hparams.get(g, {})
        if "momentum" in names:
            out[g] = "momentum"
        elif "b1" in names:
            out[g] = "b1"
    return out


def configure_momentum(callback: Any, hparams: Hyperparams, enabled: bool) -> dict[str, str]:
    """Per group, where `callback` writes momentum; a clear error when there is nowhere."""
    found = momentum_names(hparams, callback.groups) if enabled else {}
    if enabled and not found:
        names = sorted({n for d in hparams.values() for n in d})
        raise ValueError(
            f"{callback!r} cycles momentum, but the optimizer injects neither 'momentum' nor "
            f"'b1' (it has {names}); use e.g. injectable(optax.sgd, learning_rate=0.1, "
            "momentum=0.9), or pass cycle_momentum=False"
        )
    callback.sets = ("learning_rate",) + tuple(sorted(set(found.values())))
    return found


class MomentumCycling:
    """Mixin for schedules that also cycle momentum (``cycle_momentum``): picks where to write
    it at fit start (`momentum` or `b1`, per group) and writes it in the rule."""

    cycle_momentum: bool = False
    _momentum: dict[str, str] = {}

    def configure(self, hparams: Hyperparams) -> None:
        self._momentum = configure_momentum(self, hparams, self.cycle_momentum)

    def write_momentum(self, hparams: Hyperparams, value: Any) -> None:
        for group, name in self._momentum.items():
            write(hparams, [group], name, value)


class PeakFromFinder:
    """Mixin for schedules whose peak LR an `LRFinder` may set (``<peak_arg>=None``).

    The peak lives in the device state field `peak_arg`, so setting it never recompiles.
    """

    peak_arg = "max_lr"
    peak_required = True  # False: None means "the optimizer's injected value"
    _peak_from_finder: float | None = None

    def peak(self) -> float | None:
        """The peak given to the constructor, else the one an LR finder set (else None)."""
        given = getattr(self, self.peak_arg)
        return given if given is not None else self._peak_from_finder

    def check_peak(self, value: float) -> None:
        """Raises ValueError if `value` cannot be this schedule's peak."""
        check_number(self.peak_arg, value, low=0, low_open=True)

    def set_peak(self, trainer: Any, value: float) -> None:
        """Sets the peak (e.g. from an LR finder) without recompiling the step."""
        self.check_peak(value)
        self._peak_from_finder = float(value)
        if trainer is not None and getattr(trainer, "trainer_state", None) is not None:
            trainer.update_callback_state(self, **{self.peak_arg: value})

    def state_dict(self) -> dict[str, Any]:
        return {"peak_from_finder": self._peak_from_finder}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._peak_from_finder = state_dict.get("peak_from_finder")

    def on_train_epoch_start(self, trainer: Any, state: Any) -> None:
        if trainer.current_epoch == 0 and self.peak_required and self.peak() is None:
            raise ValueError(
                f"{self!r} has {self.peak_arg}=None, which means 'set by an LR finder', but "
                f"nothing set it; put LRFinder() before it in callbacks, or pass "
                f"{self.peak_arg}=<float>"
            )


def waiting_for_peak(callbacks: Sequence[Any]) -> list[Any]:
    """The schedules among `callbacks` (children of composites included) whose peak is None
    and must come from an LR finder."""
    out = []
    for cb in callbacks:
        if isinstance(cb, PeakFromFinder) and cb.peak_required and cb.peak() is None:
            out.append(cb)
        out += waiting_for_peak(getattr(cb, "children", ()))
    return out

"""Momentum cycling shared by OneCycle and CyclicLR: ``momentum`` (SGD) or ``b1`` (Adam)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flax_lr_callbacks.callbacks.clocks import write
from flax_lr_callbacks.hyperparams import Hyperparams

__all__ = ["MomentumCycling", "configure_momentum", "momentum_names"]


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

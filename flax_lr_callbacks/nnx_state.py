"""NNXTrainState: an NNX model and optimizer as a pure train state the Trainer can carry.

`Trainer.fit` carries a pytree through one jitted step. For NNX, the model is split once into
its graph definition (static) and its parameters and other state (arrays); the step works on
the arrays alone, so there is no per-step Python graph traversal, and the cost per step is the
linen path's. Your ``loss_fn(model, batch)`` receives the model re-assembled inside the step.

    state = NNXTrainState.create(model, injectable(optax.sgd, learning_rate=0.1, momentum=0.9))
    state = Trainer(loss_fn, callbacks=[OneCycle(0.1)]).fit(state, train, val)
    state.update(model)             # write the trained parameters back into `model`

Non-parameter state (BatchNorm statistics, RNG counters) is passed to the model as it was at
`create` and not updated by the step; give dropout its key through the ``rng`` argument of
``loss_fn(model, batch, rng)`` instead of stateful `nnx.Rngs`.

The drop-in `LRCallbacks` takes an `nnx.Optimizer` where it takes an optax state; it tells
them apart with `is_optimizer` and reads the optax state inside with `optax_state`.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import optax
from flax import nnx, struct

__all__ = ["NNXTrainState", "is_optimizer", "optax_state"]


class NNXTrainState(struct.PyTreeNode):
    """A linen-`TrainState`-shaped view of an NNX model (``params``, ``opt_state``, ``step``,
    ``apply_gradients``) for `Trainer.fit`."""

    step: jax.Array
    params: Any  # nnx.State of the model's nnx.Param variables
    rest: Any  # the model's other state, passed through
    opt_state: optax.OptState
    graphdef: Any = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    @classmethod
    def create(cls, model: nnx.Module, tx: optax.GradientTransformation | nnx.Optimizer
               ) -> NNXTrainState:
        """From a model and an optax transformation (or an `nnx.Optimizer`, whose
        transformation and current optimizer state are taken)."""
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        if isinstance(tx, nnx.Optimizer):
            opt_state = jax.tree_util.tree_map(
                lambda v: v[...], tx.opt_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
            tx, step = tx.tx, tx.step[...]
        else:
            opt_state, step = tx.init(params), 0
        return cls(step=jax.numpy.asarray(step, jax.numpy.int32), params=params, rest=rest,
                   opt_state=opt_state, graphdef=graphdef, tx=tx)

    def model(self, params: Any = None) -> nnx.Module:
        """The model with `params` (default: this state's)."""
        return nnx.merge(self.graphdef, self.params if params is None else params, self.rest)

    def bind_loss(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn(model, ...)`` as a function of the parameters (what the Trainer
        differentiates)."""
        def on_params(params, *args, **kwargs):
            return fn(self.model(params), *args, **kwargs)

        return on_params

    def apply_gradients(self, *, grads: Any) -> NNXTrainState:
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state)

    def update(self, model: nnx.Module) -> None:
        """Writes the parameters into `model` (an object with this state's structure)."""
        nnx.update(model, self.params)


def is_optimizer(x: Any) -> bool:
    """Whether `x` is an `nnx.Optimizer` (updated in place) rather than an optax state."""
    return isinstance(x, nnx.Optimizer)


def optax_state(x: Any) -> Any:
    """The optax state inside an `nnx.Optimizer` (its variables), or `x` itself."""
    return x.opt_state if is_optimizer(x) else x

"""The one TrainState, the model and mesh it is built from, and the code lengths of a config."""

from __future__ import annotations

from typing import Any, List

import flax
import jax
import jax.numpy as jnp
from flax.training import train_state

from nsh_jax import optim

__all__ = ["TrainState", "bit_list", "create_train_state", "make_mesh"]


class TrainState(train_state.TrainState):
  """Params, optimizer state, step, BatchNorm statistics and a non-finite guard."""
  batch_stats: Any = None
  nonfinite_steps: jax.Array = None  # number of updates skipped as non-finite
  first_nonfinite: jax.Array = None  # step of the first one (-1 if none)


def bit_list(config) -> List[int]:
  """``config.model.bit_list`` ascending: the code lengths one head emits as prefixes."""
  return sorted(int(b) for b in config.model.bit_list)


def create_train_state(config, rng, inputs) -> TrainState:
  """Initial state of ``inputs.model()`` for ``inputs``
  (:class:`nsh_jax.encoder_input.EncoderInput`), pretrained weights put in."""
  model = inputs.model()
  # One compiled init: eagerly, every initializer is a compilation of its own.
  variables = jax.jit(model.init)(rng, jnp.zeros((1,) + tuple(inputs.shape), jnp.float32))
  variables = flax.core.unfreeze(inputs.init_variables(variables))
  return TrainState.create(apply_fn=model.apply, params=variables["params"],
                           tx=optim.create_optimizer(config),
                           batch_stats=variables.get("batch_stats"),
                           nonfinite_steps=jnp.zeros((), jnp.int32),
                           first_nonfinite=jnp.full((), -1, jnp.int32))


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh ``'data'`` over every device of every process."""
  # Auto axes: the compiler propagates shardings from the jit in/out shardings.
  return jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))

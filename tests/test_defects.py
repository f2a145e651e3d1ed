"""Regression tests for three defects found by review (issue #31): each failed before its fix.

* a frozen backbone was still optimised (Adam moments for every backbone weight,
  and AdamW's decoupled decay shrank it);
* an error in the input producer thread hung the training loop forever;
* NHL's dominance weights used the backbone features as the hash kernel's input,
  which is wrong for an MLP head (``model.head_hidden > 0``).
"""

import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from configs import default
from nsh_jax import input_pipeline, state as state_lib, step as step_lib
from nsh_jax.errors import DataError
from test_householder_nested import _dominance_reference  # the float64 transcription
from nsh_jax import encoder_input


def _tiny_config(**model):
  c = default.get_config()
  c.train.batch_size = 16
  c.train.steps, c.train.epochs = 900, 0.0  # a length in steps: no split to count epochs on
  c.train.warmup_steps = 1
  c.model.bit_list = (16,)
  c.model.latent_dim = 16
  for k, v in model.items():
    c.model[k] = v
  return c


def _leaf_bytes(tree) -> int:
  return sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree))


def test_frozen_backbone_is_bit_identical_and_has_no_optimizer_state():
  c = _tiny_config(frozen=True)
  c.train.weight_decay = 0.1  # decoupled decay would visibly shrink an optimised backbone
  mesh = state_lib.make_mesh()
  state = state_lib.create_train_state(c, jax.random.PRNGKey(0), encoder_input.create(c))
  before = jax.tree.map(np.array, state.params["backbone"])
  heads = {k: v for k, v in state.params.items() if k != "backbone"}
  # Adam keeps two moments per trainable weight (plus scalars): none for the backbone.
  assert _leaf_bytes(state.opt_state) <= 2 * _leaf_bytes(heads) + 64
  state = jax.device_put(state, NamedSharding(mesh, P()))
  step = step_lib.make_train_step(c, mesh, encoder_input.create(c).views)
  data = NamedSharding(mesh, P("data"))
  rng = np.random.default_rng(0)
  for _ in range(3):
    x = rng.integers(0, 255, (16, 32, 32, 3)).astype(np.uint8)
    y = rng.integers(0, 10, 16).astype(np.int32)
    head_before = np.array(state.params["hash"]["kernel"])
    state, _ = step(state, jax.device_put(x, data), jax.device_put(y, data))
  after = jax.tree.map(np.array, state.params["backbone"])
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(head_before, np.array(state.params["hash"]["kernel"]))  # heads train


def test_unfrozen_backbone_is_optimised():
  c = _tiny_config(frozen=False)
  state = state_lib.create_train_state(c, jax.random.PRNGKey(0), encoder_input.create(c))
  assert _leaf_bytes(state.opt_state) >= 2 * _leaf_bytes(state.params)


class _FailingImages:
  """Array-like whose rows fail to load after a few batches (a broken disk, say)."""
  shape = (64, 4)

  def __init__(self):
    self.calls = 0

  def __getitem__(self, idx):
    self.calls += 1
    if self.calls > 2:
      raise DataError("cannot read rows of images.bin")
    return np.zeros((len(idx), 4), np.float32)


def test_producer_error_reaches_the_training_loop_within_a_second():
  result = {}

  def consume():
    try:
      for _ in input_pipeline.train_batches(_FailingImages(), np.zeros(64, np.int32), 8, 0, 0,
                                            100):
        pass
      result["error"] = None
    except Exception as e:  # pylint: disable=broad-except
      result["error"] = e

  t0 = time.time()
  thread = threading.Thread(target=consume, daemon=True)
  thread.start()
  thread.join(timeout=5.0)
  assert not thread.is_alive(), "the consumer hung on a failed producer"
  assert time.time() - t0 < 1.0
  assert isinstance(result["error"], DataError) and "images.bin" in str(result["error"])


@pytest.mark.parametrize("hidden", [0, 32])
def test_dominance_weights_use_the_hash_kernel_gradient(hidden):
  c = _tiny_config(bit_list=(8, 16), head_hidden=hidden)
  c.loss.dominance_weights = True
  c.loss.instance_weight = 1.0
  from nsh_jax import objectives
  model = encoder_input.create(c).model()
  x = jax.random.uniform(jax.random.PRNGKey(1), (16, 32, 32, 3))
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
  outs = jax.jit(model.apply)(variables, x)  # jitted: op by op, each small op compiles alone
  labels = jnp.arange(8) % 3
  step = jnp.int32(5)

  def loss_of_kernel(kernel, k):  # autodiff through the model: an independent route
    params = jax.tree.map(lambda a: a, variables["params"])
    params["hash"] = dict(params["hash"], kernel=kernel)
    o = model.apply({**variables, "params": params}, x)
    return step_lib.length_term(c, objectives.Pair.of_stacked(o, step=step, labels=labels), k)[0]

  kernel = variables["params"]["hash"]["kernel"]
  grad = jax.jit(jax.grad(loss_of_kernel), static_argnums=1)
  want = [grad(kernel, k) for k in range(2)]
  got = jax.jit(lambda o: step_lib.head_kernel_gradients(
      c, objectives.Pair.of_stacked(o, step=step, labels=labels)))(outs)
  for g, w in zip(got, want):
    assert g.shape == kernel.shape
    np.testing.assert_allclose(g, w, rtol=2e-4, atol=1e-6)
  from nsh_jax import nested
  np.testing.assert_allclose(nested.dominance_weights(got, [8, 16]),
                             _dominance_reference(want, [8, 16]), rtol=1e-4)

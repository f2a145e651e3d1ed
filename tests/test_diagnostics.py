"""nsh_jax.diagnostics: mining precision against the dense SoftSort, known answers, and
the trainer's diagnostics metrics end to end."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

import pytest

from helpers import TINY, run_main
from nsh_jax import encoder_input


def _dense_precision(a, b, labels, m, tau, others=False):
  """Independent: form every anchor's SoftSort matrix and average label agreement
  (``others``: of the top-m mass on candidates other than the anchor's own view)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  d = a.shape[1]
  sim = a @ b.T / (2 * d) + 0.5
  same = (labels[:, None] == labels[None, :]).astype(np.float64)
  total = 0.0
  for i in range(len(a)):
    s = np.sort(sim[i])[::-1]
    logits = -np.abs(s[:, None] - sim[i][None, :]) / tau
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    if others:
      mask = np.arange(len(a)) != i
      total += (p[:m] @ (same[i] * mask)).sum() / (p[:m] @ mask).sum()
    else:
      total += (p[:m] @ same[i]).mean()
  return total / len(a)


@pytest.mark.parametrize("signs", [False, True])  # True: +-1 codes, massive ties
def test_mining_precision_matches_dense_softsort(signs):
  from nsh_jax import diagnostics
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(24, 8)), rng.normal(size=(24, 8))
  if signs:
    a, b = np.sign(a), np.sign(b)
  else:
    a, b = np.tanh(a), np.tanh(b)
  labels = rng.integers(0, 3, 24)
  for others in (False, True):
    got = diagnostics.mining_precisions(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32),
                                        jnp.asarray(labels), 3, 0.5 / 8)[int(others)]
    np.testing.assert_allclose(float(got), _dense_precision(a, b, labels, 3, 0.5 / 8, others),
                               rtol=1e-5)


def test_mining_precision_known_answers():
  from nsh_jax import diagnostics
  labels = np.repeat(np.arange(4), 8)
  protos = np.sign(np.random.default_rng(1).normal(size=(4, 32)))
  codes = jnp.asarray(protos[labels], jnp.float32)  # every class its own code: perfect mining
  assert float(diagnostics.mining_precisions(codes, codes, labels, 2, 0.1 / 32)[0]) > 0.999
  assert float(diagnostics.chance_precision(jnp.asarray(labels))) == pytest.approx(8 / 32)
  multi = jnp.array([[1, 0], [1, 1], [0, 1]])
  np.testing.assert_array_equal(diagnostics.same_label(multi),
                                [[1, 1, 0], [1, 1, 1], [0, 1, 1]])


def test_subtree_norm_counts_only_the_named_head():
  from nsh_jax import diagnostics
  tree = {"hash": {"kernel": jnp.full((2, 2), 1.0)}, "hash_hidden": {"bias": jnp.full(1, 2.0)},
          "latent": {"kernel": jnp.full(3, 100.0)}}
  assert float(diagnostics.subtree_norm(tree, "hash")) == pytest.approx(np.sqrt(4 + 4))


@pytest.mark.slow
def test_trainer_logs_diagnostics(tmp_path):
  workdir = str(tmp_path / "run")
  res = run_main(TINY + ["--config.train.steps=4", "--config.train.diagnostics=True",
                         f"--workdir={workdir}"])
  assert res.returncode == 0, res.stderr[-2000:]
  assert "mining " in res.stdout and "hash grad sorted/rest" in res.stdout
  h = json.load(open(os.path.join(workdir, "metrics.json")))["history"][-1]
  assert 0.0 <= h["mining_16bit"] <= 1.0 and 0.0 < h["mining_chance"] < 1.0
  assert 0.0 <= h["mining_others_16bit"] <= 1.0
  assert h["grad_hash_sorted"] > 0 and h["grad_hash_rest"] > 0


def test_without_sortednce_the_hash_head_gets_nothing_through_the_sorter():
  """The trainer's step (in-process) with ``loss.sorted_weight=0``: the sorted part of the
  hash head's gradient is exactly 0, the rest is not."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  from helpers import tiny_config
  from nsh_jax import state as state_lib, step as step_lib
  c = tiny_config()
  c.train.diagnostics = True
  mesh = state_lib.make_mesh()
  data = NamedSharding(mesh, P("data"))
  rng = np.random.default_rng(0)
  x = jax.device_put(rng.integers(0, 255, (16, 32, 32, 3)).astype(np.uint8), data)
  y = jax.device_put(rng.integers(0, 10, 16).astype(np.int32), data)
  for weight, sorted_zero in ((1.0, False), (0.0, True)):
    c.loss.sorted_weight, c.loss.sorted_warmup_steps = weight, 0
    state = jax.device_put(state_lib.create_train_state(c, jax.random.PRNGKey(0), encoder_input.create(c)),
                           NamedSharding(mesh, P()))
    _, m = step_lib.make_train_step(c, mesh, encoder_input.create(c).views)(state, x, y)
    assert (float(m["grad_hash_sorted"]) == 0.0) == sorted_zero, weight
    assert float(m["grad_hash_rest"]) > 0

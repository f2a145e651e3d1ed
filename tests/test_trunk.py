"""A backbone that trains: its last blocks on cached trunk activations (model.input='trunk') or
on pixels in every step (model.input='images' with model.train_blocks), the trunk frozen."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT
from helpers import checkpoint_params, read_only_compile_cache, run_main


def _config(kind, cache_dir="", blocks=2):
  from configs import cifar_prefix_pretrained
  c = cifar_prefix_pretrained.get_config()
  c.model.input, c.model.frozen, c.model.train_blocks = kind, False, blocks
  c.model.bit_list, c.model.head_hidden, c.model.latent_dim = (8, 16), 16, 8
  c.dataset.image_size, c.features.views, c.features.chunk = 32, 2, 8
  c.features.cache_dir = str(cache_dir)
  c.train.batch_size, c.train.weight_decay, c.train.backbone_lr = 8, 0.1, 0.5
  return c


def _loss(config, outs, step=0):
  from nsh_jax import objectives, step as step_lib
  return sum(step_lib.length_term(config, objectives.Pair.of_stacked(outs, step=step), k)[0]
             for k in range(2))


@pytest.mark.slow
def test_the_trunk_path_and_the_images_path_compute_the_same_step():
  """On the same augmented views: the images path (whole network, gradients stopped below
  block N-K) and the trunk path (the frozen trunk's activations into the last K blocks) give
  the same loss and the same gradients for every trainable parameter."""
  from nsh_jax import encoder_input, models, state as state_lib
  ci, ct = _config("images"), _config("trunk")
  images, trunk = encoder_input.create(ci), encoder_input.create(ct)
  si = state_lib.create_train_state(ci, jax.random.PRNGKey(0), images)
  st = state_lib.create_train_state(ct, jax.random.PRNGKey(0), trunk)
  x = images.views(jax.random.PRNGKey(3), jnp.asarray(
      np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3)).astype(np.uint8)), jnp.arange(8))

  def value_and_grad(state, inputs):
    def loss(p):
      return _loss(ci, state.apply_fn({"params": p, "batch_stats": state.batch_stats}, inputs,
                                      train=True))
    return jax.jit(jax.value_and_grad(loss))(state.params)

  # float32 arithmetic in every conv and dot: on GPUs JAX's default is TF32 (10-bit
  # mantissa), under which the two programs differ by more than rounding (an H200 gave
  # losses 17.490 vs 17.413: docs/results/accelerator.md); the CPU computes float32 anyway.
  with jax.default_matmul_precision("float32"):
    acts = models.BackboneOnly(ct.model.backbone, stop=trunk.stop).apply(trunk.variables, x)
    vi, gi = value_and_grad(si, x)
    vt, gt = value_and_grad(st, acts)
  assert float(vi) == pytest.approx(float(vt), rel=1e-5)
  assert set(gt["backbone"]) == {f"block{trunk.stop}", f"block{trunk.stop + 1}", "head_conv",
                                 "head_bn"}
  for name in gt:
    sub_i = gi[name] if name != "backbone" else {k: gi[name][k] for k in gt[name]}
    for a, b in zip(jax.tree.leaves(sub_i), jax.tree.leaves(gt[name])):
      # float32 through two different programs: equal to 1e-3 of each gradient's norm
      assert np.linalg.norm(np.asarray(a) - b) <= 1e-3 * np.linalg.norm(b) + 1e-9, name
  # below the trained blocks the images path has no gradient at all
  assert all(float(jnp.abs(g).max()) == 0 for k, v in gi["backbone"].items() if k not in gt[
      "backbone"] for g in jax.tree.leaves(v))


@pytest.mark.slow
def test_training_leaves_the_frozen_trunk_and_every_batchnorm_statistic_bit_identical():
  """Two steps with weight decay: the stem and the blocks below N-K are bit-identical to the
  ImageNet weights, so are all BatchNorm statistics; the trained blocks moved (at
  train.backbone_lr times the learning rate)."""
  from nsh_jax import encoder_input, models, state as state_lib, step as step_lib
  c = _config("images")
  inputs = encoder_input.create(c)
  mesh = state_lib.make_mesh()
  state = state_lib.create_train_state(c, jax.random.PRNGKey(0), inputs)
  pretrained = models.pretrained_backbone(c.model.backbone, 32)
  fn = step_lib.make_train_step(c, mesh, inputs.views)
  rng = np.random.default_rng(1)
  for _ in range(2):
    state, _ = fn(state, rng.integers(0, 255, (8, 32, 32, 3)).astype(np.uint8),
                  np.zeros(8, np.int32))
  below = inputs.model().part[0][1]
  for key, value in state.params["backbone"].items():
    frozen = key.startswith("stem") or (key.startswith("block") and int(key[5:]) < below)
    same = all(np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(value), jax.tree.leaves(pretrained["params"]["backbone"][key])))
    assert same == frozen, key
  for a, b in zip(jax.tree.leaves(state.batch_stats["backbone"]),
                  jax.tree.leaves(pretrained["batch_stats"]["backbone"])):
    np.testing.assert_array_equal(a, b)


def _npz(tmp_path, n=40, q=8):
  rng = np.random.default_rng(1)
  path = str(tmp_path / "d.npz")
  np.savez(path, train_images=rng.integers(0, 255, (n, 32, 32, 3)).astype(np.uint8),
           train_labels=rng.integers(0, 3, n), test_images=rng.integers(0, 255, (q, 32, 32, 3))
           .astype(np.uint8), test_labels=rng.integers(0, 3, q))
  return path


def _args(tmp_path, data, steps):
  return ["--config=configs/cifar_prefix_pretrained.py", f"--config.dataset.name=npz:{data}",
          "--config.model.input=trunk", "--config.model.frozen=False",
          "--config.model.train_blocks=2", "--config.dataset.image_size=32",
          "--config.features.views=2", "--config.features.chunk=8",
          f"--config.features.cache_dir={tmp_path / 'cache'}", f"--config.train.steps={steps}",
          "--config.train.batch_size=8", "--config.train.log_every=2",
          "--config.train.checkpoint_every=2", "--config.model.bit_list=(16,)",
          "--config.model.head_hidden=16", "--config.eval.top_k=10", "--config.eval.plots=False"]


@pytest.mark.slow
def test_trunk_run_end_to_end_and_its_photo_index_equals_its_database_codes(tmp_path):
  data = _npz(tmp_path)
  wd = tmp_path / "run"
  res = run_main(_args(tmp_path, data, 4) + [f"--workdir={wd}"])
  assert res.returncode == 0, res.stderr[-3000:]
  assert "efficientnet_lite0 (trained)" in res.stdout
  table = res.stdout.split("\nmAP@10 ")[-1]
  assert "features, cosine" in table and "trained backbone, cosine" in table
  m = json.load(open(wd / "metrics.json"))
  assert {"features", "trained backbone", "hash layer 16"} <= set(m["ceiling"])
  assert {"itq-features", "itq-trained backbone"} <= set(m["baselines"])
  assert "itq-trained backbone" in table
  # the photo index: the images through the frozen trunk and the trained top
  from PIL import Image
  from nsh_jax import input_pipeline, modes, retrieval
  from configs import cifar_prefix_pretrained
  c = cifar_prefix_pretrained.get_config()  # the run's config, as the flags above set it
  c.dataset.name, c.dataset.image_size = f"npz:{data}", 32
  c.model.input, c.model.frozen, c.model.train_blocks = "trunk", False, 2
  c.model.bit_list, c.model.head_hidden, c.eval.top_k = (16,), 16, 10
  c.features.views, c.features.chunk = 2, 8
  c.features.cache_dir, c.train.steps, c.train.batch_size = str(tmp_path / "cache"), 4, 8
  db = input_pipeline.load(c).db_images
  folder = tmp_path / "photos"
  folder.mkdir()
  for i, im in enumerate(db):
    Image.fromarray(im).save(folder / f"{i:04d}.png")
  modes.MODES.get("index")(c, str(wd), {"input": str(folder), "output": None})
  got = retrieval.load_index(str(wd / "index" / "codes_16bit.npz"))["codes"]
  want = retrieval.load_index(str(wd / "codes" / "database_16bit.npz"))["codes"]
  np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_a_killed_trunk_run_resumes_to_the_uninterrupted_runs_params(tmp_path):
  data = _npz(tmp_path)
  ok = run_main(_args(tmp_path, data, 6) + [f"--workdir={tmp_path / 'whole'}"])
  assert ok.returncode == 0, ok.stderr[-3000:]
  env = read_only_compile_cache(dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3"))
  wd = tmp_path / "killed"
  proc = subprocess.Popen([sys.executable, "main.py"] + _args(tmp_path, data, 6)
                          + [f"--workdir={wd}"], cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 600
  while not os.path.isdir(wd / "checkpoints" / "2") and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  res = run_main(_args(tmp_path, data, 6) + [f"--workdir={wd}"])
  assert res.returncode == 0 and "resumed from checkpoint" in res.stdout, res.stderr[-3000:]
  a, b = checkpoint_params(tmp_path / "whole", 6), checkpoint_params(wd, 6)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])

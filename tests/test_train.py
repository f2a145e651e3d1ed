"""The trainer: multi-device equivalence, resume, data paths, CLI errors."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np

import pytest

from conftest import ROOT, SHARED_NPZ
from helpers import TINY, read_only_compile_cache, run_main

STEP_SCRIPT = textwrap.dedent("""
    import sys, numpy as np
    from nsh_jax import xla_cpu
    xla_cpu.apply_defaults()  # an entry point: the XLA:CPU settings main.py applies
    import jax
    from configs import default
    from nsh_jax import encoder_input, state as state_lib, step as step_lib
    c = default.get_config()
    c.train.batch_size = 16; c.model.bit_list = (16,); c.model.latent_dim = 16
    c.train.warmup_steps = 1; c.train.steps, c.train.epochs = 900, 0.0
    mesh = state_lib.make_mesh()
    state = state_lib.create_train_state(c, jax.random.PRNGKey(0), encoder_input.create(c))
    state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    step = step_lib.make_train_step(c, mesh, encoder_input.create(c).views)
    data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(3):
        x = rng.integers(0, 255, (16, 32, 32, 3)).astype(np.uint8)
        y = rng.integers(0, 10, 16).astype(np.int32)
        state, m = step(state, jax.device_put(x, data), jax.device_put(y, data))
        losses.append(float(m["loss"]))
    flat = np.concatenate([np.ravel(l) for l in jax.tree.leaves(jax.device_get(state.params))])
    np.savez(sys.argv[1], losses=np.array(losses), params=flat, n=jax.device_count())
""")


def _run_steps(tmp_path, devices):
  out = str(tmp_path / f"steps_{devices}.npz")
  env = dict(os.environ, PYTHONPATH=ROOT,
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  subprocess.run([sys.executable, "-c", STEP_SCRIPT, out], cwd=ROOT, env=env, check=True,
                 timeout=600)
  return np.load(out)


@pytest.mark.slow
def test_eight_devices_match_one(tmp_path):
  one, eight = _run_steps(tmp_path, 1), _run_steps(tmp_path, 8)
  assert int(one["n"]) == 1 and int(eight["n"]) == 8
  np.testing.assert_allclose(eight["losses"], one["losses"], rtol=1e-4)
  np.testing.assert_allclose(eight["params"], one["params"], rtol=1e-3, atol=1e-5)


@pytest.mark.slow
def test_short_run_learns_and_resumes_after_kill(tmp_path):
  workdir = str(tmp_path / "run")
  args = TINY + ["--config.train.steps=16", f"--workdir={workdir}"]
  env = read_only_compile_cache(dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3"))
  proc = subprocess.Popen([sys.executable, "main.py"] + args, cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  ckpt = os.path.join(workdir, "checkpoints")
  deadline = time.time() + 300
  while time.time() < deadline:  # kill once a checkpoint past step 2 exists
    if os.path.isdir(ckpt) and any(d.isdigit() and int(d) >= 4 for d in os.listdir(ckpt)):
      break
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  res = run_main(args)
  assert res.returncode == 0, res.stderr[-2000:]
  assert "resumed from checkpoint" in res.stdout
  metrics = json.load(open(os.path.join(workdir, "metrics.json")))
  losses = [h["loss"] for h in metrics["history"]]
  half = len(losses) // 2
  assert np.mean(losses[half:]) < np.mean(losses[:half]) - 0.05  # the loss falls
  codes = np.load(os.path.join(workdir, "codes", "embeddings.npz"))["database"]
  _, counts = np.unique(np.sign(codes[:, :16]), axis=0, return_counts=True)
  # Not collapsed onto a few codes.  After 16 steps from scratch how spread the codes are
  # depends on the draw (two training subsets gave 143 distinct codes, the largest 12% of
  # the database, and 38 distinct, the largest 26%): the bound is against collapse.
  assert len(counts) >= 16 and counts.max() < 0.5 * len(codes)
  assert os.path.exists(os.path.join(workdir, "codes", "database_16bit.npz"))
  assert any(f.startswith("events.out.tfevents")
             for f in os.listdir(os.path.join(workdir, "tensorboard")))
  assert "mAP@100 16-bit:" in res.stdout


@pytest.mark.parametrize("flag,expect", [
    ("--config.model.bit_list=(0,)", "model.bit_list"),
    ("--config.model.bit_list=abc", "model.bit_list"),
    ("--config.loss.num_positives=16", "num_positives"),
    ("--config.train.batch_size=12", "divisible"),
    ("--config.loss.name=foo", "loss.name"),
    ("--config.dataset.name=npz:/nonexistent.npz", "not found"),
    ("--config=configs/no_such_config.py", "No such file"),
    ("--config=configs/default.py:noir", "augmentation preset"),
])
@pytest.mark.slow
def test_bad_config_is_one_line(tmp_path, flag, expect):
  res = run_main(TINY + [flag, f"--workdir={tmp_path}"],
                 {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert res.returncode == 2
  err = [l for l in res.stderr.strip().splitlines() if l.strip()]
  assert len(err) == 1 and err[0].startswith("error:") and expect in err[0], res.stderr
  assert "Traceback" not in res.stderr


def test_augmentation_presets_set_every_augmentation_key():
  from configs import base, default
  assert set(base.AUGMENTATIONS["digits"]) == set(base.AUGMENTATIONS["natural"])
  for name, preset in base.AUGMENTATIONS.items():
    c = default.get_config(name)
    assert {k: c.dataset[k] for k in preset} == preset
  digits = default.get_config()
  assert digits.dataset.flip == 0 and digits.dataset.jitter_prob == 0  # mirrored 2 is not a 2
  assert base.get_config().dataset.flip == 0.5  # the paper's configs keep MoCo-v2


@pytest.mark.slow
def test_unknown_key_and_wrong_type_fail_cleanly(tmp_path):
  for flag in ("--config.train.stepz=3", "--config.train.steps=abc"):
    res = run_main(TINY + [flag, f"--workdir={tmp_path}"])
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "train.step" in res.stderr


def _npz(path, **kw):
  base = dict(train_images=np.zeros((20, 8, 8, 3), np.uint8), train_labels=np.zeros(20, int),
              test_images=np.zeros((5, 8, 8, 3), np.uint8), test_labels=np.zeros(5, int))
  base.update(kw)
  base = {k: v for k, v in base.items() if v is not None}
  np.savez(path, **base)
  return path


@pytest.mark.parametrize("change,expect", [
    ({"test_labels": None}, "missing keys"),
    ({"train_images": np.zeros((20, 8, 8), np.uint8)}, "NHWC"),
    ({"train_images": np.zeros((20, 8, 8, 3), np.float32)}, "uint8"),
    ({"train_labels": np.zeros(19, int)}, "n=20"),
    ({"test_images": np.zeros((0, 8, 8, 3), np.uint8), "test_labels": np.zeros(0, int)}, "empty"),
])
@pytest.mark.slow
def test_bad_npz_is_a_clear_error(tmp_path, change, expect):
  from nsh_jax import input_pipeline
  path = _npz(str(tmp_path / "d.npz"), **change)
  with pytest.raises(input_pipeline.DataError, match=expect):
    input_pipeline.load_npz(_data_config(), path)


def _data_config(**dataset):
  from configs import base
  c = base.get_config()
  for k, v in dataset.items():
    c.dataset[k] = v
  return c


def test_cifar10_split_with_mock_data():
  import tensorflow_datasets as tfds
  from nsh_jax import input_pipeline
  c = _data_config(name="cifar10", protocol="paper", queries_per_class=10, train_per_class=50)
  with tfds.testing.mock_data(num_examples=1500, policy=tfds.testing.MockPolicy.USE_CODE):
    splits = input_pipeline.load_cifar10(c)
  # mock_data gives train and test the same 1500 examples each.
  assert splits.query_images.shape == (100, 32, 32, 3)
  assert splits.db_images.shape[0] == 3000 - 100
  assert splits.train_images.shape[0] == 500
  assert np.all(np.bincount(splits.query_labels, minlength=10) == 10)
  assert np.all(np.bincount(splits.train_labels, minlength=10) == 50)


def test_cifar10_split_sizes_at_full_scale(monkeypatch):
  """The standard protocol's sizes: 1,000 / 59,000 / 5,000, balanced, seeded."""
  from nsh_jax import input_pipeline
  rng = np.random.default_rng(0)
  fake = {"train": (np.zeros((50000, 2, 2, 3), np.uint8), np.repeat(np.arange(10), 5000)),
          "test": (np.zeros((10000, 2, 2, 3), np.uint8), np.repeat(np.arange(10), 1000))}
  import tensorflow_datasets as tfds
  import tensorflow as tf
  monkeypatch.setattr(tfds, "load", lambda *a, **k: [
      tf.data.Dataset.from_tensor_slices(fake["train"]),
      tf.data.Dataset.from_tensor_slices(fake["test"])])
  monkeypatch.setattr(input_pipeline, "_tfds_prepared", lambda data_dir: True)
  c = _data_config(name="cifar10", protocol="paper", split_seed=3)
  s = input_pipeline.load_cifar10(c)
  assert (len(s.query_labels), len(s.db_labels), len(s.train_labels)) == (1000, 59000, 5000)
  assert np.all(np.bincount(s.query_labels) == 100) and np.all(np.bincount(s.train_labels) == 500)
  s2 = input_pipeline.load_cifar10(c)
  np.testing.assert_array_equal(s.train_labels, s2.train_labels)


def test_batches_are_a_function_of_the_step():
  from nsh_jax import input_pipeline
  images, labels = np.arange(100)[:, None], np.arange(100)
  whole = [b for _, b, _ in input_pipeline.train_batches(images, labels, 16, 0, 0, 20)]
  resumed = [b for _, b, _ in input_pipeline.train_batches(images, labels, 16, 0, 13, 20)]
  for a, b in zip(whole[13:], resumed):  # a resumed stream is the uninterrupted one's tail
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(whole[0], whole[6])  # epochs reshuffle
  assert not np.array_equal(input_pipeline.batch_indices(100, 16, 1, 0), whole[0][:, 0])
  epoch = np.concatenate([input_pipeline.batch_indices(100, 16, 0, s) for s in range(6)])
  assert len(set(epoch.tolist())) == 96


@pytest.mark.skipif(not os.path.exists(SHARED_NPZ), reason="shared CIFAR-10 prefix absent")
def test_shared_cifar_prefix_loads():
  from nsh_jax import input_pipeline
  s = input_pipeline.load_npz(_data_config(val_queries_per_class=0), SHARED_NPZ)
  assert s.train_images.shape == (5085, 32, 32, 3) and s.query_images.shape == (1017, 32, 32, 3)
  # The default (-1) takes 20 validation queries per class out of training: a tenth of
  # the smallest class (>= 480 rows), capped at 20.
  s = input_pipeline.load_npz(_data_config(), SHARED_NPZ)
  assert s.train_images.shape == (5085 - 200, 32, 32, 3) and len(s.val_rows) == 200
  assert np.all(np.bincount(s.db_labels[s.val_rows], minlength=10) == 20)
  assert s.num_classes == 10


def test_sorted_weight_scales_sortednce_and_zero_leaves_the_instance_term():
  import jax
  from configs import base
  from nsh_jax import losses, objectives
  rng = np.random.default_rng(0)
  out = [{"codes": np.tanh(rng.normal(size=(12, 8))).astype(np.float32),
          "latents": rng.normal(size=(12, 6)).astype(np.float32)} for _ in range(2)]
  c = base.get_config()
  c.loss.instance_weight, c.loss.sorted_warmup_steps = 1.0, 0
  inst = losses.nt_xent(out[0]["latents"], out[1]["latents"], c.loss.temperature)
  pair = lambda a, b: objectives.Pair(a, b, step=5)
  _, with_sort = objectives.length_loss(c, pair(*out), 8)
  c.loss.sorted_weight = 0.5
  _, half = objectives.length_loss(c, pair(*out), 8)
  c.loss.sorted_weight = 0.0
  none = jax.jit(lambda a, b: objectives.length_loss(c, pair(a, b), 8)[1])(out[0], out[1])
  np.testing.assert_allclose(float(none), float(inst), rtol=1e-6)
  np.testing.assert_allclose(float(half - inst), 0.5 * float(with_sort - inst), rtol=1e-5)


def test_errors_are_described_in_one_line():
  from nsh_jax import errors

  class JaxRuntimeError(Exception):  # the name JAX's runtime errors carry
    pass

  msg, code = errors.describe(JaxRuntimeError("INTERNAL: Gloo all-to-all failed\n  at ..."), 2)
  assert code == 2 and "another process of this 2-process run" in msg and "\n" not in msg
  assert errors.describe(errors.ConfigError("bad\n  value"), 1) == ("bad value", 2)
  assert errors.describe(RuntimeError("bug"), 1)[1] == 1
  assert errors.describe(JaxRuntimeError("oom"), 1)[1] == 1  # one process: a bug, not a peer


def test_sort_temperature_units_and_annealing():
  from configs import base
  from nsh_jax import objectives
  c = base.get_config().loss
  assert float(objectives.sort_temperature(c, 0, 64)) == pytest.approx(1 / 64)  # one bit
  c.sort_temperature, c.sort_temperature_unit = 1 / 16, "length"
  for bits in (16, 32, 64):  # the same fraction of the length at every length
    assert float(objectives.sort_temperature(c, 0, bits)) == pytest.approx(1 / 16)
  c.sort_temperature_unit, c.sort_temperature, c.sort_temperature_start = "bit", 1.0, 5.0
  c.sort_anneal_steps = 100
  assert float(objectives.sort_temperature(c, 50, 16)) == pytest.approx(3.0 / 16)
  assert float(objectives.sort_temperature(c, 500, 16)) == pytest.approx(1.0 / 16)


def test_epochs_set_the_steps_from_the_training_split():
  from configs import default
  from nsh_jax import config_checks, train
  c = default.get_config()
  assert (c.train.steps, c.train.epochs) == (0, 40.0)  # the first run's length is in epochs
  config_checks.validate(c)
  c.train.epochs, c.train.batch_size = 2.5, 64
  r = train.resolve_steps(c, 1000)
  assert r.train.steps == 40 and c.train.steps == 0  # ceil(2.5 * 1000 / 64); c untouched
  r = train.resolve_steps(c, 64 * 3)
  assert r.train.steps == 8  # ceil(2.5 * 3): a partial pass still trains
  c.train.steps, c.train.epochs = 7, 0.0
  assert train.resolve_steps(c, 1000) is c  # epochs 0: steps as given
  c.train.epochs = 2.5
  # Both set is ambiguous, and neither is no length at all: the same error from the command
  # line's checks and from the trainer.
  for check in (config_checks.validate, lambda c: train.resolve_steps(c, 1000)):
    with pytest.raises(config_checks.ConfigError, match=r"train.steps=7 and config.train.epochs="
                       r"2.5 both set .*--config.train.epochs=0"):
      check(c)
  c.train.steps, c.train.epochs = 0, 0.0
  with pytest.raises(config_checks.ConfigError, match="train.steps or config.train.epochs"):
    config_checks.validate(c)
  c.train.epochs = -1.0
  with pytest.raises(config_checks.ConfigError, match="train.epochs"):
    config_checks.validate(c)
  c.train.steps, c.train.epochs = -3, 1.0
  with pytest.raises(config_checks.ConfigError, match="train.steps must be >= 0"):
    config_checks.validate(c)


def test_the_progress_line_gives_no_rate_for_the_compiling_step_and_the_eta_after():
  """The first step after a (re)start is compilation's time: its line says the rate comes
  with the next log, not '0.00 steps/s | ETA 555555h'; later lines give rate and ETA."""
  from configs import default
  from nsh_jax import train
  lines = []
  run = train._Run(default.get_config(), "", None, None, None, None, lines.append)
  run.config.train.steps = 1000
  m = {"loss": 1.0, "bit_balance": 0.5}
  train._log_step(run, 1, m, 0.0)
  train._log_step(run, 500, m, 2.0)
  assert lines[0].endswith("| steps/s from the next log") and "ETA" not in lines[0]
  assert lines[1].endswith("| 2.00 steps/s | ETA 4m10s")  # 500 steps left at 2 per second


def test_the_accelerator_memory_peak_is_none_on_the_cpu():
  """``device_peak_bytes`` reads the backends that count memory (GPU, TPU); the CPU does not,
  and the trainer then prints no memory figure."""
  import jax
  from nsh_jax import train
  assert jax.default_backend() == "cpu"
  assert train.device_peak_bytes() is None

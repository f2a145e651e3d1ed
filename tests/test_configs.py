"""Every shipped config, with every variant its get_config accepts, loads and passes the
start-up checks; the data it names is where it says (where the shared data is present)."""

import glob
import importlib
import os

import pytest

from conftest import ROOT

CONFIG_FILES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs",
                                                                               "*.py"))
                      if not p.endswith("__init__.py"))


def _cases():
  out = []
  for name in CONFIG_FILES:
    module = importlib.import_module(f"configs.{name}")
    if not hasattr(module, "get_config"):
      continue  # a helper module (configs/common.py)
    out += [(name, v) for v in getattr(module, "VARIANTS", (None,))]
  return out


CASES = _cases()


def test_the_config_list_is_what_ships():
  """The list below is what the README and docs/usage.md name; a new config file joins it."""
  assert [f"{n}:{v}" if v else n for n, v in CASES] == [
      "base", "cifar:lite2", "cifar:lite0", "cifar:vgg16", "cifar:lite2_top",
      "cifar:lite2_finetune", "cifar_nested",
      "cifar_prefix:plain", "cifar_prefix:nested", "cifar_prefix_pretrained", "coco", "corel5k",
      "default:natural", "default:digits", "nus_wide"]


@pytest.mark.parametrize("name,variant", CASES, ids=[f"{n}:{v}" for n, v in CASES])
def test_every_config_and_variant_passes_the_start_up_checks(name, variant):
  from nsh_jax import config_checks, input_pipeline
  module = importlib.import_module(f"configs.{name}")
  c = module.get_config() if variant is None else module.get_config(variant)
  config_checks.validate(c)
  config_checks.validate(c, device_count=8 if c.train.batch_size % 8 == 0 else 1)
  kind, arg = input_pipeline.split_name(c.dataset.name)
  shared = os.path.join(ROOT, "..", "shared", "data")
  if arg and os.path.isdir(shared):  # a path it names in the shared data is really there
    assert os.path.isabs(arg) and os.path.exists(arg), arg
  if c.dataset.offline_copy and os.path.isdir(shared):
    assert os.path.exists(c.dataset.offline_copy)


@pytest.mark.parametrize("name", sorted({n for n, v in CASES if v is not None}))
def test_unknown_variant_is_refused(name):
  module = importlib.import_module(f"configs.{name}")
  with pytest.raises(ValueError, match="variant|preset"):
    module.get_config("no_such_variant")

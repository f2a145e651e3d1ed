"""nsh_jax.xla_cpu: the flag is added only when it can take effect, and it does take effect."""

import ast
import os
import subprocess
import sys


from nsh_jax import xla_cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


_PROBE = """
import os, sys
sys.path.insert(0, {root!r})
{before}
from nsh_jax import xla_cpu
xla_cpu.apply_defaults()
import jax, jax.numpy as jnp
hlo = jax.jit(lambda a, b: a @ b).lower(jnp.ones((64, 64)), jnp.ones((64, 64))).compile().as_text()
print(repr(os.environ.get("XLA_FLAGS", "")), "__ynn_fusion" in hlo)
"""


def _probe(env_extra, before=""):
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_cpu.OPT_OUT_ENV)}
  env.update(env_extra, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _PROBE.format(root=ROOT, before=before)],
                       env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  flags, ynn = out.stdout.strip().rsplit(" ", 1)
  return ast.literal_eval(flags), ynn == "True"


def test_apply_defaults_turns_ynn_fusions_off_and_respects_users():
  # Flag added, and XLA:CPU then compiles a dot without a YNN fusion.
  flags, ynn = _probe({})
  assert flags == xla_cpu.YNN_FLAG + "=" and not ynn
  # Other flags are kept.
  flags, ynn = _probe({"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  assert flags == "--xla_force_host_platform_device_count=2 " + xla_cpu.YNN_FLAG + "="
  assert not ynn
  # Opt-out and a user's own value are left alone (XLA's default uses YNN for the dot).
  flags, ynn = _probe({xla_cpu.OPT_OUT_ENV: "1"})
  assert flags == "" and ynn
  flags, ynn = _probe({"XLA_FLAGS": xla_cpu.YNN_FLAG + "=individual_dot"})
  assert flags == xla_cpu.YNN_FLAG + "=individual_dot" and ynn
  # A backend started before the call: too late, so the environment is not touched.
  flags, ynn = _probe({}, before="import jax; jax.devices()")
  assert flags == "" and ynn


_IMPORT_PROBE = """
import os, sys
sys.path.insert(0, {root!r})
import jax
before = dict(os.environ)
import nsh_jax, nsh_jax.losses, nsh_jax.sorting
print(dict(os.environ) == before, "numba" in sys.modules, "tensorflow" in sys.modules)
"""


def test_import_has_no_side_effects():
  """``import nsh_jax`` (after JAX's own import) leaves the environment alone, and the
  loss stack loads neither Numba nor TensorFlow."""
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_cpu.OPT_OUT_ENV)}
  out = subprocess.run([sys.executable, "-c", _IMPORT_PROBE.format(root=ROOT)], env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split() == ["True", "False", "False"], out.stdout

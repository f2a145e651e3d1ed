import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED_NPZ = os.path.join(ROOT, "..", "shared", "data", "cifar10_prefix.npz")
SHARED_JPEG = os.path.join(ROOT, "..", "shared", "data", "cifar10_jpeg.tar.xz")

# JAX's persistent compilation cache for the suite (NSH_JAX_TEST_COMPILE_CACHE, set by
# .ci/run): the many short main.py runs and in-process steps compile the same programs.
# Subprocesses inherit it through JAX_COMPILATION_CACHE_DIR; the SIGKILL-timing tests
# drop it (tests/helpers.py: without_compile_cache).
_cache = os.environ.get("NSH_JAX_TEST_COMPILE_CACHE")
if _cache:
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _cache)
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# The suite is an entry point too: run under the XLA:CPU settings main.py applies
# (subprocesses inherit them through XLA_FLAGS).
from nsh_jax import xla_cpu  # noqa: E402

xla_cpu.apply_defaults()

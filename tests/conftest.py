import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED_NPZ = os.path.join(ROOT, "..", "shared", "data", "cifar10_prefix.npz")
SHARED_JPEG = os.path.join(ROOT, "..", "shared", "data", "cifar10_jpeg.tar.xz")

# JAX's persistent compilation cache for the suite (NSH_JAX_TEST_COMPILE_CACHE, set by
# .ci/run): the many short main.py runs and in-process steps compile the same programs.
# Subprocesses inherit it through JAX_COMPILATION_CACHE_DIR; runs that a test SIGKILLs
# only read it (tests/helpers.py).
_cache = os.environ.get("NSH_JAX_TEST_COMPILE_CACHE")
if _cache:
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _cache)
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# The suite is an entry point too: run under the XLA:CPU settings main.py applies
# (subprocesses inherit them through XLA_FLAGS).
from nsh_jax import xla_cpu  # noqa: E402

xla_cpu.apply_defaults()


# The files with the longest runs first (by --durations in CI): pytest-xdist hands out whole
# files in collection order (--dist loadfile), and a long file dealt last leaves the other
# worker idle.
_SLOW_FIRST = ("test_multiprocess.py", "test_reliability.py", "test_cli.py", "test_train.py",
               "test_image_folder.py", "test_sorted_nce.py", "test_baselines.py",
               "test_feature_cache.py", "test_efficientnet.py", "test_models.py")


def pytest_configure(config):
  # pytest-xdist >= 3.6 deals the files with the most tests first unless told not to, which
  # put the two long multi-process tests last, on one worker, while the other sat idle.
  if hasattr(config.option, "loadscopereorder"):
    config.option.loadscopereorder = False


def pytest_collection_modifyitems(session, config, items):
  rank = lambda item: (_SLOW_FIRST.index(item.path.name) if item.path.name in _SLOW_FIRST
                       else len(_SLOW_FIRST))
  items.sort(key=rank)  # stable: the order inside a file is kept

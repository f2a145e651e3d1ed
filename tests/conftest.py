import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED_NPZ = os.path.join(ROOT, "..", "shared", "data", "cifar10_prefix.npz")

# The suite is an entry point too: run under the XLA:CPU settings main.py applies
# (subprocesses inherit them through XLA_FLAGS).
from nsh_jax import xla_cpu  # noqa: E402

xla_cpu.apply_defaults()

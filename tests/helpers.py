import os
import subprocess
import sys

from conftest import ROOT


def run_main(args, env_extra=None, timeout=600):
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
  env.update(env_extra or {})
  return subprocess.run([sys.executable, os.path.join(ROOT, "main.py")] + args, cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=timeout)


TINY = ["--config=configs/default.py", "--config.train.batch_size=16",
        "--config.train.log_every=2", "--config.train.checkpoint_every=2",
        "--config.model.bit_list=(16,)", "--config.model.latent_dim=16", "--config.eval.top_k=100"]

"""PNG plots of an evaluation: precision-recall, precision@N, t-SNE of codes."""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from nsh_jax.codes import binarize


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _curves(plt, path, title, xlabel, result, baselines, xy, **axes):
  """One figure: the model's curve per length (solid), each baseline's at the longest
  length (dashed), from ``xy(report) -> (x, y)``."""
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for bits, r in sorted(result["by_bits"].items(), key=lambda kv: int(kv[0])):
    ax.plot(*xy(r), marker=".", label=f"model {bits} bits")
  for name, by_bits in sorted(baselines.items()):
    bits = max(by_bits, key=int)
    ax.plot(*xy(by_bits[bits]), linestyle="--", label=f"{name} {bits} bits")
  ax.set(xlabel=xlabel, ylabel="precision", title=title, **axes)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)
  return path


def _pr(r):
  return r["pr_curve"]["recall"], r["pr_curve"]["precision"]


def _p_at_n(r):
  ns = sorted(int(n) for n in r["precision_at_n"])
  return ns, [r["precision_at_n"][n] for n in ns]


def write_all(plot_dir: str, result: dict, query_embeddings: np.ndarray, query_labels,
              baselines: Optional[dict] = None) -> list:
  """Writes ``pr_curve.png``, ``precision_at_n.png`` (the model beside ``baselines``,
  ``{name: {bits: metrics.evaluate_codes(...)}}``) and ``tsne.png``; returns their paths."""
  plt = _pyplot()
  os.makedirs(plot_dir, exist_ok=True)
  baselines = baselines or {}
  paths = [
      _curves(plt, os.path.join(plot_dir, "pr_curve.png"),
              "Precision-recall (Hamming radius sweep)", "recall", result, baselines, _pr),
      _curves(plt, os.path.join(plot_dir, "precision_at_n.png"), "Precision@N",
              "N (top retrieved)", result, baselines, _p_at_n, xscale="log")]

  labels = np.asarray(query_labels)
  if labels.ndim == 1 and query_embeddings.shape[0] >= 10:
    from sklearn.manifold import TSNE
    n = min(1000, query_embeddings.shape[0])
    codes = binarize(query_embeddings[:n], np.float32)
    xy = TSNE(2, init="pca", perplexity=min(30, n // 4), random_state=0).fit_transform(codes)
    fig, ax = plt.subplots(figsize=(5, 5))
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=labels[:n], cmap="tab10", s=6)
    ax.legend(*sc.legend_elements(), fontsize=7, loc="best", title="class")
    ax.set(title=f"t-SNE of {query_embeddings.shape[1]}-bit query codes", xticks=[], yticks=[])
    paths.append(os.path.join(plot_dir, "tsne.png"))
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)
  return paths

"""PNG plots of an evaluation: precision-recall, precision@N, t-SNE of codes."""

from __future__ import annotations

import os

import numpy as np

from nsh_jax.codes import binarize


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def write_all(plot_dir: str, result: dict, query_embeddings: np.ndarray, query_labels) -> list:
  """Writes ``pr_curve.png``, ``precision_at_n.png`` and ``tsne.png``; returns their paths."""
  plt = _pyplot()
  os.makedirs(plot_dir, exist_ok=True)
  paths = []
  fig, ax = plt.subplots(figsize=(5, 4))
  for bits, r in sorted(result["by_bits"].items(), key=lambda kv: int(kv[0])):
    pr = r["pr_curve"]
    ax.plot(pr["recall"], pr["precision"], marker=".", label=f"{bits} bits")
  ax.set(xlabel="recall", ylabel="precision", title="Precision-recall (Hamming radius sweep)")
  ax.grid(alpha=0.3)
  ax.legend()
  paths.append(os.path.join(plot_dir, "pr_curve.png"))
  fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(5, 4))
  for bits, r in sorted(result["by_bits"].items(), key=lambda kv: int(kv[0])):
    pn = r["precision_at_n"]
    ns = sorted(int(n) for n in pn)
    ax.plot(ns, [pn[n] for n in ns], marker="o", label=f"{bits} bits")
  ax.set(xlabel="N (top retrieved)", ylabel="precision", xscale="log", title="Precision@N")
  ax.grid(alpha=0.3)
  ax.legend()
  paths.append(os.path.join(plot_dir, "precision_at_n.png"))
  fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
  plt.close(fig)

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

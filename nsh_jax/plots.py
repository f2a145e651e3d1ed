"""PNG plots of an evaluation: precision-recall, precision@N, t-SNE of codes, and retrieval
galleries (a query and its top-k, right and wrong marked)."""

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
  ``{name: {bits: metrics.evaluate_codes(...)}}``) and ``tsne.png`` (not for collapsed
  codes: one distinct code); returns their paths."""
  plt = _pyplot()
  os.makedirs(plot_dir, exist_ok=True)
  baselines = baselines or {}
  paths = [
      _curves(plt, os.path.join(plot_dir, "pr_curve.png"),
              "Precision-recall (Hamming radius sweep)", "recall", result, baselines, _pr),
      _curves(plt, os.path.join(plot_dir, "precision_at_n.png"), "Precision@N",
              "N (top retrieved)", result, baselines, _p_at_n, xscale="log")]

  labels = np.asarray(query_labels)
  n = min(1000, query_embeddings.shape[0])
  codes = binarize(query_embeddings[:n], np.float32)
  # Collapsed codes (all equal) have no variance: t-SNE's PCA start divides by it
  # and the fit crashes the process.  Nothing to draw, so no plot.
  if labels.ndim == 1 and n >= 10 and len(np.unique(codes, axis=0)) > 1:
    from sklearn.manifold import TSNE
    xy = TSNE(2, init="pca", perplexity=min(30, n // 4), random_state=0).fit_transform(codes)
    fig, ax = plt.subplots(figsize=(5, 5))
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=labels[:n], cmap="tab10", s=6)
    ax.legend(*sc.legend_elements(), fontsize=7, loc="best", title="class")
    ax.set(title=f"t-SNE of {query_embeddings.shape[1]}-bit query codes", xticks=[], yticks=[])
    paths.append(os.path.join(plot_dir, "tsne.png"))
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)
  return paths


def gallery(path: str, queries, results, title: str = "", size: int = 64,
            query_titles=None) -> str:
  """A grid PNG: one row per query -- the query image, then its results.

  Args:
    queries: ``[q]`` uint8 images ``[H, W, 3]`` (any sizes).
    results: per query, a list of ``(image, caption, correct)``: ``correct`` True /
      False draws a green / red frame, None no frame.
    title: figure title; ``query_titles`` an optional caption per query.
  """
  plt = _pyplot()
  from PIL import Image
  rows, cols = len(queries), 1 + max((len(r) for r in results), default=0)
  height = 1.3 * rows + 0.35
  fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols, height), squeeze=False)
  fig.subplots_adjust(wspace=0.08, hspace=0.3, top=1 - 0.3 / height)
  thumb = lambda im: np.asarray(Image.fromarray(np.asarray(im, np.uint8)).resize(
      (size, size), Image.BICUBIC))
  for i in range(rows):
    cells = [(queries[i], (query_titles or [None] * rows)[i] or "query", None)] + list(results[i])
    for j in range(cols):
      ax = axes[i, j]
      ax.set_xticks([])
      ax.set_yticks([])
      if j >= len(cells):
        ax.axis("off")
        continue
      image, caption, correct = cells[j]
      ax.imshow(thumb(image))
      ax.set_xlabel(caption, fontsize=6, labelpad=1)
      color = {True: "#1a9c3a", False: "#d62728", None: "#555555" if j == 0 else "none"}[correct]
      for spine in ax.spines.values():
        spine.set_edgecolor(color)
        spine.set_linewidth(3 if correct is not None else (1.5 if j == 0 else 0))
  if title:
    fig.suptitle(title, fontsize=9, y=1 - 0.08 / height)
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)
  return path


def retrieval_examples(path: str, query_images, query_labels, db_images, db_labels,
                       query_codes, db_codes, title: str, class_names=None, queries: int = 8,
                       k: int = 10) -> str:
  """``plots/retrieval.png``: ``queries`` fixed queries (the first of each class while
  there are classes, then the next ones) and their top-``k`` database images by Hamming
  distance of ``query_codes``/``db_codes`` (signs taken), relevant (the same class, or a
  shared label) in green, others red."""
  from nsh_jax import retrieval
  ql, dl = np.asarray(query_labels), np.asarray(db_labels)
  if ql.ndim == 1:
    firsts = [int(np.flatnonzero(ql == c)[0]) for c in np.unique(ql)][:queries]
    rest = [i for i in range(len(ql)) if i not in firsts]
    pick = (firsts + rest)[:queries]
  else:
    pick = list(range(min(queries, len(ql))))
  pack = lambda c: retrieval.pack_codes(np.asarray(c))
  dist, idx = retrieval.search(pack(query_codes[pick]), pack(db_codes), k)
  def name(y):  # a class name, or a multi-hot row's first two label names
    if np.ndim(y) == 0:
      return class_names[int(y)] if class_names is not None else str(int(y))
    on = [class_names[i] if class_names is not None else str(i) for i in np.flatnonzero(y)]
    return ",".join(on[:2]) + ("..." if len(on) > 2 else "")
  rel = (lambda a, b: bool(a == b)) if ql.ndim == 1 else (lambda a, b: bool(np.dot(a, b) > 0))
  results = [[(db_images[j], f"{name(dl[j])} d={d}", rel(ql[i], dl[j]))
              for j, d in zip(idx[r], dist[r])] for r, i in enumerate(pick)]
  return gallery(path, [query_images[i] for i in pick], results, title,
                 query_titles=[f"query: {name(ql[i])}" for i in pick])

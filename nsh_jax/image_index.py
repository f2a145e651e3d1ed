"""Your own photos: index a folder with a trained model, search it by image.

An **index** is a folder (``--output``, default ``WORKDIR/index``) holding

* ``index.json`` -- the image files (paths relative to the indexed folder or
  archive, row ``i`` = code ``i``), the files that could not be read, the code
  lengths, the quantizer, the source, the model's digest, and each file's label
  words where the source holds HashNet lists (:func:`nsh_jax.image_lists.read_words`);
* ``codes_<b>bit.npz`` (checksummed packed codes, :func:`retrieval.save_index`)
  and ``codes_<b>bit.faiss`` (a faiss binary index) per length.

:func:`build` encodes every image file under a folder or archive (recursive,
any layout, any sizes: :mod:`nsh_jax.image_folder`; ``archive.tar.xz/sub/dir``
indexes one folder inside an archive) with ``encode`` -- images -> continuous
codes, the model the index belongs to -- and codes them as the run's evaluation
did (``codes_for``: its saved quantizer).  Run again on a grown folder, it
encodes only the files it does not hold yet.  Unreadable files get one line
each and a count; they never stop the index.  :func:`search` ranks the index by
Hamming distance to query images, equal distances by a seeded hash of each file's name
(:func:`tie_keys`, not file order), and draws the gallery.

Images are prepared as the training data was: an image that is square and no
larger than ``dataset.image_size`` is kept (the encoder resizes it on the device,
as for training data of that size); any other is resized (shorter side) and
centre-cropped to ``dataset.image_size``.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from nsh_jax import image_folder, image_lists, plots, retrieval
from nsh_jax.errors import DataError
from nsh_jax.files import format_duration, read_json, write_json

__all__ = ["build", "load", "search", "tie_keys", "INDEX_FILE"]

INDEX_FILE = "index.json"


def _encode_all(encode: Callable, images: Sequence[np.ndarray]) -> np.ndarray:
  """``encode`` over images of possibly several sizes, one call per size, rows in order."""
  out: List[Optional[np.ndarray]] = [None] * len(images)
  by_shape: Dict[tuple, List[int]] = {}
  for i, im in enumerate(images):
    by_shape.setdefault(im.shape, []).append(i)
  for rows in by_shape.values():
    emb = encode(np.stack([images[i] for i in rows]))
    for r, e in zip(rows, emb):
      out[r] = e
  return np.stack(out)


def _paths(out_dir: str, bits: int) -> Tuple[str, str]:
  return (os.path.join(out_dir, f"codes_{bits}bit.npz"),
          os.path.join(out_dir, f"codes_{bits}bit.faiss"))


def load(out_dir: str) -> Tuple[dict, Dict[int, np.ndarray]]:
  """``(index.json contents, {bits: packed codes})`` of an index folder."""
  meta = read_json(os.path.join(out_dir, INDEX_FILE))
  if not isinstance(meta, dict) or "files" not in meta:
    raise DataError(f"{out_dir} is not an index (no readable {INDEX_FILE}); build one with "
                    f"--mode=index --input=FOLDER --output={out_dir}")
  codes = {}
  for b in meta["bits"]:
    idx = retrieval.load_index(_paths(out_dir, b)[0])
    if idx["codes"].shape[0] != len(meta["files"]):
      raise DataError(f"{_paths(out_dir, b)[0]} holds {idx['codes'].shape[0]} codes for "
                      f"{len(meta['files'])} files: the index is damaged; rebuild it")
    codes[int(b)] = idx["codes"]
  return meta, codes


def build(source: str, out_dir: str, encode: Callable, codes_for: Callable,
          bits: Sequence[int], model_digest: str, image_size: int, quantizer: str,
          batch: int = 256, log=print) -> dict:
  """Indexes (or extends the index of) the image files under ``source``; returns the
  index's ``index.json`` contents.  ``codes_for(embeddings, b)`` gives a length's codes."""
  bits = [int(b) for b in bits]
  meta, old = {"files": [], "skipped": []}, {}
  if os.path.exists(os.path.join(out_dir, INDEX_FILE)):
    meta, old = load(out_dir)
    if meta.get("model") != model_digest or [int(b) for b in meta["bits"]] != bits:
      raise DataError(f"{out_dir} was built by another model or code lengths (model "
                      f"{meta.get('model')}, {meta['bits']} bits; this one {model_digest}, "
                      f"{bits} bits); give another --output")
  known = set(meta["files"]) | set(meta.get("skipped", []))
  files = [(n, read) for n, read in image_folder.list_image_files(source) if n not in known]
  if not files and not meta["files"]:
    raise DataError(f"no image files ({', '.join(image_folder.IMAGE_EXTENSIONS)}) in {source}")
  log(f"index: {len(files):,} new image file(s) in {source}"
      + (f" ({len(meta['files']):,} already indexed)" if meta["files"] else ""))
  new_names, new_codes, skipped = [], {b: [] for b in bits}, []
  t0, last = time.time(), 0.0
  for lo in range(0, len(files), batch):
    images, names = [], []
    for name, read in files[lo:lo + batch]:
      try:
        images.append(image_folder.decode(name, read(), image_size))
        names.append(name)
      except (DataError, OSError) as e:
        skipped.append(name)
        log(f"index: skipped {name}: {' '.join(str(e).split())}")
    if images:
      emb = _encode_all(encode, images)
      for b in bits:
        new_codes[b].append(retrieval.pack_codes(codes_for(emb, b)))
      new_names += names
    done = min(lo + batch, len(files))
    if time.time() - last > 10 or done == len(files):
      last = time.time()
      rate = done / max(last - t0, 1e-9)
      log(f"index: {done:,}/{len(files):,} images | {rate:.1f} images/s | "
          f"ETA {format_duration((len(files) - done) / max(rate, 1e-9))}")
  os.makedirs(out_dir, exist_ok=True)
  words = image_lists.read_words(source)
  meta = {"files": meta["files"] + new_names, "skipped": meta.get("skipped", []) + skipped,
          "bits": bits, "model": model_digest, "quantizer": quantizer,
          "source": os.path.abspath(os.path.expanduser(source)), "image_size": int(image_size),
          "words": {**meta.get("words", {}), **{n: words[n] for n in new_names if n in words}}}
  for b in bits:
    parts = ([old[b]] if b in old else []) + new_codes[b]
    packed = np.concatenate(parts) if parts else np.zeros((0, (b + 7) // 8), np.uint8)
    npz, faiss_path = _paths(out_dir, b)
    retrieval.save_index(npz, packed, b, metadata={"model": model_digest})
    retrieval.save_faiss_index(faiss_path, packed, b)
  write_json(os.path.join(out_dir, INDEX_FILE), meta)  # last: the codes it describes exist
  log(f"index: {len(meta['files']):,} images in {out_dir} ({len(new_names):,} new"
      + (f", {len(skipped)} unreadable skipped" if skipped else "") + ")")
  return meta


def tie_keys(files: Sequence[str], seed: int = 0) -> np.ndarray:
  """Each file's tie key: a seeded hash of its name (label-agnostic, the same whatever order
  the files were indexed in): equal Hamming distances are ranked by it, not by file order."""
  import hashlib
  return np.asarray([int.from_bytes(hashlib.blake2b(f"{seed}:{f}".encode(), digest_size=8)
                                    .digest(), "little") for f in files], np.uint64)


def _read_named(source: str, names: Sequence[str], size: int) -> Dict[str, np.ndarray]:
  wanted = set(names)
  return {n: image_folder.decode(n, read(), size) for n, read in image_folder.list_image_files(source)
          if n in wanted}


def search(out_dir: str, queries: str, encode: Callable, codes_for: Callable, bits: int,
           model_digest: str, k: int = 10, output: Optional[str] = None, log=print,
           rerank: int = 0) -> dict:
  """Top-``k`` index files for each image in ``queries`` (a file, folder or archive);
  prints them, writes ``output`` (.json) and a gallery PNG beside it.  ``rerank = R > 0``
  re-orders each query's Hamming top-``max(R, k)`` by its real-valued code
  (:func:`nsh_jax.retrieval.rerank`) before the top ``k`` are taken."""
  meta, codes = load(out_dir)
  if meta.get("model") != model_digest:
    raise DataError(f"{out_dir} was built by another model (digest {meta.get('model')}; this "
                    f"run's is {model_digest}): search it with the run that built it, or "
                    f"index again with --output elsewhere")
  if int(bits) not in codes:
    raise DataError(f"{out_dir} holds {meta['bits']}-bit codes, not {bits}-bit ones: pick one "
                    f"of its lengths with --bits")
  size = int(meta["image_size"])
  if os.path.isfile(queries) and not queries.lower().endswith(image_folder.ARCHIVE_SUFFIXES):
    with open(queries, "rb") as f:
      q_files = [(os.path.basename(queries), f.read())]
  else:
    q_files = [(n, read()) for n, read in image_folder.list_image_files(queries)]
  if not q_files:
    raise DataError(f"no query images in {queries}")
  if not meta["files"]:
    raise DataError(f"{out_dir} holds no images: index a folder first")
  q_images = [image_folder.decode(f"{queries}: {n}" if len(q_files) > 1 else queries, d, size)
              for n, d in q_files]
  q_real = codes_for(_encode_all(encode, q_images), bits)
  db = codes[int(bits)]
  dist, idx = retrieval.search(retrieval.pack_codes(q_real), db, max(k, rerank),
                               tie_keys(meta["files"]))
  if rerank:
    order = retrieval.rerank(q_real, db, idx, int(bits))
    dist, idx = (np.take_along_axis(a, order, 1) for a in (dist, idx))
  dist, idx = dist[:, :k], idx[:, :k]
  words, q_words = meta.get("words", {}), image_lists.read_words(queries)
  result = {"index": os.path.abspath(out_dir), "bits": int(bits), "queries": []}
  for (name, _), d_row, i_row in zip(q_files, dist, idx):
    hits = [{"file": meta["files"][j], "distance": int(d)} for j, d in zip(i_row, d_row)]
    for h in hits:
      if h["file"] in words:
        h["words"] = words[h["file"]]
    query = {"query": name, "results": hits}
    if name in q_words:
      query["words"] = q_words[name]
    result["queries"].append(query)
    log(f"query {name}:" + (f"  [{', '.join(q_words[name])}]" if name in q_words else ""))
    for rank, h in enumerate(hits, 1):
      log(f"  {rank:2d}. {h['file']}  (Hamming {h['distance']})"
          + (f"  [{', '.join(h['words'])}]" if "words" in h else ""))
  output = output or os.path.join(out_dir, "search.json")
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  write_json(output, result)
  gallery_path = os.path.splitext(output)[0] + ".png"
  _gallery(gallery_path, meta, result, q_images, size, k)
  log(f"wrote {output} and {gallery_path}")
  return result


def _gallery(path: str, meta: dict, result: dict, q_images, size: int, k: int) -> None:
  """The first 8 queries and their hits; a hit is framed green when it shares a label word
  with the query, red when not (no frame without words)."""
  shown = result["queries"][:8]
  thumbs = _read_named(meta["source"], [h["file"] for q in shown for h in q["results"]], size)
  shares = lambda q, h: (bool(set(q["words"]) & set(h["words"]))
                         if "words" in q and "words" in h else None)
  plots.gallery(path, q_images[:8],
                [[(thumbs[h["file"]], f"{os.path.basename(h['file'])} d={h['distance']}",
                   shares(q, h)) for h in q["results"] if h["file"] in thumbs] for q in shown],
                f"top {k} of {len(meta['files']):,} images, {result['bits']}-bit codes",
                query_titles=[os.path.basename(q["query"]) for q in shown])

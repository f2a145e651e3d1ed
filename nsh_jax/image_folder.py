"""Image files from a directory or an archive, decoded to uint8 RGB arrays of one size.

The layout users' photo collections come in (torchvision ``ImageFolder``,
``tfds.ImageFolder``): ``PATH`` is a directory or a ``.tar``, ``.tar.gz``/``.tgz``,
``.tar.xz``/``.txz``, ``.tar.bz2`` or ``.zip`` archive, read in place (nothing is
unpacked to disk).

* :func:`iter_image_files` -- ``(relative path, bytes)`` of every image file
  (``.jpg .jpeg .png .bmp .gif .webp``, any case) under ``PATH``, recursively;
  other files are ignored.  An archive with one top folder is read from inside it.
* :func:`decode` -- bytes -> ``uint8 [s, s, 3]`` RGB: a square image of at most
  ``S`` on a side is kept; any other is resized (bicubic, with Pillow's
  antialiasing) so that its shorter side is ``S`` and centre-cropped to ``S x S``.
* :func:`read_images` -- many files at once: images that all share one size are
  kept at that size (CIFAR-10's 32 x 32 stays 32 x 32; the input pipeline
  resizes to the model's input on the device); otherwise every image is brought
  to ``S x S`` as :func:`decode` does.
* :func:`read_split_folder` -- ``<split>/<class>/<image>`` (splits ``train``,
  ``test``, optionally ``database``) -> images, labels, paths per split and the
  class names (sorted; label ``i`` is ``class_names[i]``).

Errors are :class:`~nsh_jax.errors.DataError` with one line naming the file:
a missing path, an archive that is not one, an image that cannot be decoded
(``read_split_folder`` stops: a dataset with a silently dropped image is not
the dataset its split sizes promise; :func:`read_images` with ``skip_bad=True``,
what indexing a photo folder uses, skips it and reports it), a class folder
missing from one split, an empty class, no images at all.
"""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np

from nsh_jax.errors import DataError

__all__ = ["IMAGE_EXTENSIONS", "ARCHIVE_SUFFIXES", "split_inner", "list_image_files",
           "read_named_files", "iter_image_files", "decode", "read_images", "read_split_folder"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".zip")
SPLITS = ("train", "test", "database")


def _is_image(name: str) -> bool:
  base = os.path.basename(name)
  return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


def _strip_top(names: Sequence[str]) -> str:
  """The one folder every name sits in (``'top/'``), or ``''``."""
  tops = {n.split("/", 1)[0] for n in names if n}
  if len(tops) == 1 and all("/" in n for n in names if n):
    top = tops.pop()
    if top not in SPLITS:
      return top + "/"
  return ""


def _archive_members(path: str, keep=_is_image) -> Iterator[Tuple[str, object]]:
  """``(member name, read())`` of an archive's files that ``keep`` (by name: image files)
  (``read`` None for a folder), in archive order: compressed tar streams are read once,
  never seeked back."""
  low = path.lower()
  if low.endswith(".zip"):
    try:
      z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
      raise DataError(f"{path} is not a readable .zip archive ({e})")
    with z:
      for info in z.infolist():
        if info.is_dir():
          yield info.filename.rstrip("/"), None
        elif keep(info.filename):
          yield info.filename, _bytes(z.read, info)
    return
  try:
    t = tarfile.open(path, "r:*")
  except (tarfile.TarError, OSError, EOFError) as e:
    raise DataError(f"{path} is not a readable tar archive ({type(e).__name__}: {e})")
  with t:
    try:
      for member in t:
        if member.isfile() and keep(member.name):
          yield member.name, _bytes(lambda m: t.extractfile(m).read(), member)
        elif member.isdir():
          yield member.name.rstrip("/"), None
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
      raise DataError(f"{path} is damaged: cannot read past a member ({type(e).__name__}: {e})")


def _bytes(read, member):
  """A member's bytes, read now (a compressed stream cannot come back for it), as a
  zero-argument reader."""
  data = read(member)
  return lambda: data


def _directory_files(path: str) -> Iterator[Tuple[str, object]]:
  for root, dirs, files in os.walk(path):
    dirs.sort()
    for d in dirs:
      yield os.path.relpath(os.path.join(root, d), path).replace(os.sep, "/"), None
    for f in sorted(files):
      full = os.path.join(root, f)
      yield os.path.relpath(full, path).replace(os.sep, "/"), (
          lambda p=full: open(p, "rb").read())


def split_inner(path: str) -> Tuple[str, str]:
  """``'a/b.tar.xz/test/cat'`` -> ``('a/b.tar.xz', 'test/cat/')`` when ``a/b.tar.xz`` is an
  archive file and the whole path does not exist; else ``(path, '')``."""
  if os.path.exists(path):
    return path, ""
  parts = path.replace(os.sep, "/").split("/")
  for cut in range(len(parts) - 1, 0, -1):
    head = "/".join(parts[:cut])
    if os.path.isfile(head) and head.lower().endswith(ARCHIVE_SUFFIXES):
      return head, "/".join(p for p in parts[cut:] if p) + "/"
  return path, ""


def list_image_files(path: str, folders: list = None, extra: Sequence[str] = ()
                     ) -> List[Tuple[str, object]]:
  """``(relative path with '/', read() -> bytes)`` of each image file under ``path``
  (directory: sorted walk, read when called; archive: archive order, already read),
  ``archive/inner/folder`` for one folder inside an archive; the folders seen are
  appended to ``folders`` when one is given.  Files whose relative path is in ``extra``
  (e.g. ``'train.txt'``) are listed too, after the images."""
  path, inner = split_inner(os.path.expanduser(path))
  if not os.path.exists(path):
    raise DataError(f"image folder or archive not found: {path}")
  wanted = lambda name: _is_image(name) or (bool(extra) and name.rsplit("/", 1)[-1] in
                                              {e.rsplit("/", 1)[-1] for e in extra})
  if os.path.isdir(path):
    members = _directory_files(path)
  elif path.lower().endswith(ARCHIVE_SUFFIXES):
    members = _archive_members(path, wanted)
  else:
    raise DataError(f"{path} is neither a directory nor an archive "
                    f"({', '.join(ARCHIVE_SUFFIXES)})")
  listed, others, dirs = [], [], []
  for name, read in members:
    if read is None:
      dirs.append(name)
    elif _is_image(name):
      listed.append((name, read))
    elif wanted(name):
      others.append((name, read))
  top = _strip_top([name for name, _ in listed])
  prefix = top + inner
  if inner and not any(n.startswith(prefix) for n, _ in listed):
    one = [(n.rsplit("/", 1)[-1], read) for n, read in listed if n + "/" == prefix]
    if one:  # archive/inner/file.jpg: that one image
      return one
    raise DataError(f"no image files under {inner} in {path}")
  if folders is not None:
    folders.extend(d[len(top):] for d in dirs if d.startswith(top) and d != top.rstrip("/"))
  extra = set(extra)
  return ([(name[len(prefix):], read) for name, read in listed if name.startswith(prefix)]
          + [(name[len(prefix):], read) for name, read in others
             if name.startswith(prefix) and name[len(prefix):] in extra])


def read_named_files(path: str, names: Sequence[str]) -> Dict[str, bytes]:
  """``{name: bytes}`` of the files named (paths relative to ``path``, a directory or an
  archive, read from inside an archive's one top folder) that exist; nothing else is read."""
  path = os.path.expanduser(path)
  if os.path.isdir(path):
    return {n: open(os.path.join(path, n), "rb").read() for n in names
            if os.path.isfile(os.path.join(path, n))}
  if not (os.path.isfile(path) and path.lower().endswith(ARCHIVE_SUFFIXES)):
    return {}
  found = {m: read() for m, read in _archive_members(path, lambda m: m.split("/", 1)[-1] in names
                                                     or m in names) if read is not None}
  top = _strip_top(list(found))
  return {m[len(top):]: data for m, data in found.items() if m[len(top):] in names}


def iter_image_files(path: str, folders: list = None) -> Iterator[Tuple[str, bytes]]:
  """``(relative path, file bytes)`` of :func:`list_image_files`, read one at a time."""
  for name, read in list_image_files(path, folders):
    try:
      data = read()
    except (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
      raise DataError(f"cannot read {name} in {path} ({type(e).__name__}: {e})")
    yield name, data


def _open_rgb(name: str, data: bytes, size: int):
  from PIL import Image
  try:
    img = Image.open(io.BytesIO(data))
    if img.format == "JPEG":
      img.draft("RGB", (size, size))  # decode big JPEGs at a reduced scale (>= size)
    return img.convert("RGB")
  except Exception as e:  # Pillow raises many types for bad files
    why = ("not an image file Pillow can read" if type(e).__name__ == "UnidentifiedImageError"
           else f"{type(e).__name__}: {e}")
    raise DataError(f"cannot decode image {name}: {why}") from None


def _square(img, size: int):
  """Shorter side to ``size`` (bicubic), then the centre ``size x size``."""
  from PIL import Image
  w, h = img.size
  scale = size / min(w, h)
  nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
  img = img.resize((nw, nh), Image.BICUBIC)
  left, top = (nw - size) // 2, (nh - size) // 2
  return img.crop((left, top, left + size, top + size))


def decode(name: str, data: bytes, size: int) -> np.ndarray:
  """``uint8 [s, s, 3]`` of one image file: kept if square and at most ``size`` on a side,
  else brought to ``size x size`` (shorter side resized, centre crop)."""
  img = _open_rgb(name, data, size)
  w, h = img.size
  if w != h or w > size:
    img = _square(img, size)
  return np.asarray(img, np.uint8)


def read_images(files: Sequence[Tuple[str, bytes]], size: int, skip_bad: bool = False,
                label=lambda name: name):
  """``(images uint8 [n, s, s, 3], names kept, names skipped)`` of ``files``:
  kept at their common size if they share one (square, at most ``size``), else
  each brought to ``size x size``.  A bad file raises unless ``skip_bad``, naming it
  ``label(name)`` (where it came from)."""
  arrays, names, skipped = [], [], []
  for name, data in files:
    try:
      arrays.append(decode(label(name), data, size))
    except DataError:
      if not skip_bad:
        raise
      skipped.append(name)
      continue
    names.append(name)
  if arrays and len({a.shape for a in arrays}) > 1:
    from PIL import Image
    arrays = [a if a.shape[0] == size else np.asarray(_square(Image.fromarray(a), size))
              for a in arrays]
  images = np.stack(arrays) if arrays else np.zeros((0, size, size, 3), np.uint8)
  return images, names, skipped


def read_split_folder(path: str, size: int) -> Tuple[Dict[str, tuple], List[str]]:
  """``({split: (images, labels int32 [n], paths)}, class_names)`` of an image folder
  laid out as ``<split>/<class>/<image>`` (``train`` and ``test`` required)."""
  by_split: Dict[str, list] = {}
  folders: list = []
  for name, data in iter_image_files(path, folders):
    parts = name.split("/")
    if len(parts) != 3 or parts[0] not in SPLITS:
      continue  # not <split>/<class>/<image>: not part of the dataset
    by_split.setdefault(parts[0], []).append((name, data))
  if not by_split:
    raise DataError(f"no images in {path} laid out as <split>/<class>/<image> "
                    f"(splits {', '.join(SPLITS[:2])}, optionally database)")
  for split in ("train", "test"):
    if split not in by_split:
      raise DataError(f"{path} has no {split}/ folder of <class>/<image> files "
                      f"(it has {', '.join(sorted(by_split))})")
  classes_in = {s: {n.split("/")[1] for n, _ in files} for s, files in by_split.items()}
  class_names = sorted(set().union(*classes_in.values()))
  for folder in folders:
    parts = folder.split("/")
    if len(parts) == 2 and parts[0] in by_split and parts[1] not in classes_in[parts[0]]:
      raise DataError(f"{path}: class folder {folder}/ has no images "
                      f"({', '.join(IMAGE_EXTENSIONS)}); remove it or add its images")
  for split, have in classes_in.items():
    missing = [c for c in class_names if c not in have]
    if missing:
      other = next(s for s, h in classes_in.items() if missing[0] in h)
      raise DataError(f"{path}: class folder {split}/{missing[0]}/ is missing or empty "
                      f"({other}/{missing[0]}/ has images); every split needs every class")
  out = {}
  index = {c: i for i, c in enumerate(class_names)}
  sizes = set()
  for split, files in by_split.items():
    files.sort(key=lambda f: f[0])
    images, names, _ = read_images(files, size, label=lambda name: f"{path}: {name}")
    out[split] = [images, np.array([index[n.split("/")[1]] for n in names], np.int32), names]
    sizes.add(images.shape[1])
  if len(sizes) > 1:  # splits decoded to different common sizes: bring all to one
    from PIL import Image
    for split in out:
      if out[split][0].shape[1] != size:
        out[split][0] = np.stack([np.asarray(_square(Image.fromarray(a), size))
                                  for a in out[split][0]])
  return {s: tuple(v) for s, v in out.items()}, class_names

"""Real data for the pipeline, tests and benchmarks (docs/usage.md), read offline.

- `load_fashion_mnist`: the gzipped IDX files of Debian's `dataset-fashion-mnist` package (or
  the same four files in a folder you give). A missing file is an error, never a fallback to
  other data, so a benchmark cannot silently run on something else.
- `load_digits`: scikit-learn's bundled 8x8 digits, split train/test with a fixed seed.
- `load_cifar10`: a local copy of CIFAR-10's python batches (Keras' cache folder by default).
- `synthetic`: class prototypes plus noise, for tests.
- `load_npz`: a user's arrays, `x_train, y_train, x_test, y_test` in one `.npz` file (the
  names `keras.datasets.*.load_data()` returns).
- `load_image_folder`: a user's images, one subfolder per class as
  `keras.utils.image_dataset_from_directory` reads them, either under `train/` and `test/`
  or in one tree that is split with the seed.
- `load_dataset`: one of them by name; only with `download=True` (the `xbar-prune` config
  field `data.download`) may Keras download Fashion-MNIST or CIFAR-10 when local files are
  missing. Tests and benchmarks never download.

All return `((x_train, y_train), (x_test, y_test))`: float32 images NHWC in [0, 1] and int64
labels, as `keras.datasets.*.load_data()` does (but already scaled and with a channel axis).

`input_pipeline` turns such arrays into the `tf.data` input that training reads: shuffled with
a seed, batched, prefetched, and shardable by `tf.distribute`.
"""

from __future__ import annotations

import gzip
import os
import pathlib
from typing import Any

import numpy as np

from xbar_tfmot.models import replicas as replicas_lib

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")

# IDX type codes (third byte of the magic number) -> numpy big-endian dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

Split = tuple[np.ndarray, np.ndarray]


def read_idx(path: str | os.PathLike, limit: int | None = None) -> np.ndarray:
  """One IDX file (gzipped if its name ends in `.gz`) as a numpy array.

  The header is checked: two zero bytes, a known type code, the number of dimensions, and a
  payload of exactly the size the dimensions give. `limit` keeps the first items only.
  """
  path = pathlib.Path(path)
  opener = gzip.open if path.suffix == ".gz" else open
  try:
    with opener(path, "rb") as f:
      data = f.read()
  except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
    raise ValueError(f"{path}: cannot read it as {'gzipped ' if opener is gzip.open else ''}"
                     f"IDX: {e}") from e
  if len(data) < 4:
    raise ValueError(f"{path}: {len(data)} bytes, too short for an IDX header (4-byte magic "
                     f"number).")
  zero, code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
  if zero != 0 or code not in _IDX_DTYPES or ndim < 1:
    raise ValueError(
        f"{path}: bad IDX magic number 0x{data[:4].hex()}; valid: 0x0000 then a type code "
        f"({', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)}) then the number of dimensions (>= 1), "
        f"e.g. 0x00000803 for images, 0x00000801 for labels.")
  header = 4 + 4 * ndim
  if len(data) < header:
    raise ValueError(f"{path}: IDX header declares {ndim} dimensions but the file has "
                     f"{len(data)} bytes, fewer than the {header} of the header.")
  shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
  dtype = np.dtype(_IDX_DTYPES[code])
  expected = int(np.prod(shape)) * dtype.itemsize
  if len(data) - header != expected:
    raise ValueError(f"{path}: IDX payload is {len(data) - header} bytes; the header's shape "
                     f"{shape} of {dtype.name} needs {expected}.")
  array = np.frombuffer(data, dtype, offset=header).reshape(shape)
  if limit is not None:
    array = array[:limit]
  return array.astype(dtype.newbyteorder("="))


def input_pipeline(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int | None = None,
                   reshuffle_each_iteration: bool = False, replicas: int = 1):
  """A batched `tf.data.Dataset` of `(x, y)` for `model.fit`, the same for a given `seed`.

  The images stay one tensor in memory (already a cache: the loaders return them whole) and
  only indices are shuffled, `Dataset.range(n).shuffle(n, seed)`, a full-buffer shuffle that
  costs 8 bytes per image instead of a copy of each image; every batch is one `tf.gather`.
  `seed=None` keeps the order (evaluation). `reshuffle_each_iteration=True` draws a new seeded
  order every epoch of one `fit` call; `False` replays the same order (one dataset per epoch,
  as a resumed run rebuilds it). Batches are `batch_size` (the global batch under a strategy);
  the last may be smaller. Auto-sharding is by data, so `MultiWorkerMirroredStrategy` splits
  each global batch over the workers whatever the source.

  `replicas > 1` (the strategy's `num_replicas_in_sync`) gives every replica an equal,
  non-empty batch (`models.replicas`): `batch_size` must be a multiple of `replicas`; a
  training order (`seed` set) drops its last, partial batch; an evaluation order (`seed=None`)
  is padded to whole batches and yields `(x, y, sample_weight)`, weight 0 on the padding and
  `padded / n` on every image, so Keras' weighted accuracy and its loss (a sum over each
  batch divided by the batch's size) come out as the plain means over the `n` images.
  """
  import tensorflow as tf
  if len(x) != len(y):
    raise ValueError(f"input_pipeline: {len(x)} images but {len(y)} labels; valid: one label "
                     f"per image.")
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"input_pipeline: batch_size={batch_size!r}; valid: an int >= 1.")
  n = len(x)
  replicas_lib.check_batch(batch_size, replicas)
  if replicas > 1 and n < (batch_size if seed is not None else 1):
    raise replicas_lib.ReplicaBatchError(
        f"input_pipeline: {n} images for a global batch of {batch_size} over {replicas} "
        f"replicas; valid: at least {batch_size if seed is not None else 1} (training drops "
        f"the last, partial batch).")
  images, labels = tf.convert_to_tensor(x), tf.convert_to_tensor(y)
  total = replicas_lib.padded_length(n, batch_size, replicas) if seed is None else n
  order = tf.data.Dataset.range(total)
  if seed is not None:
    order = order.shuffle(n, seed=seed, reshuffle_each_iteration=reshuffle_each_iteration)
  order = order.batch(batch_size, drop_remainder=replicas > 1 and seed is not None)
  if replicas > 1 and seed is None:
    weight = tf.constant(total / n, tf.float32)

    def fetch(i):
      real = tf.minimum(i, n - 1)
      return (tf.gather(images, real), tf.gather(labels, real),
              tf.where(i < n, weight, tf.zeros_like(weight)))
  else:
    def fetch(i):
      return tf.gather(images, i), tf.gather(labels, i)
  dataset = order.map(fetch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
  options.deterministic = True
  return dataset.prefetch(tf.data.AUTOTUNE).with_options(options)


def load_fashion_mnist(path: str | os.PathLike | None = None,
                       limit: int | None = None) -> tuple[Split, Split]:
  """Fashion-MNIST from local gzipped IDX files.

  Args:
    path: folder holding the four files of `FASHION_MNIST_FILES`; default the Debian package's
      folder `/usr/share/datasets/fashion-mnist`.
    limit: keep the first `limit` images of each split (train and test), for quick runs.

  Returns:
    `((x_train, y_train), (x_test, y_test))`: float32 `(N, 28, 28, 1)` in [0, 1] and int64
    labels in 0..9.
  """
  if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
    raise ValueError(f"load_fashion_mnist: limit={limit!r} is invalid; valid: None or an int >= 1.")
  folder = pathlib.Path(FASHION_MNIST_DIR if path is None else path)
  missing = [name for name in FASHION_MNIST_FILES.values() if not (folder / name).is_file()]
  if missing:
    raise FileNotFoundError(
        f"Fashion-MNIST: {', '.join(missing)} not found in {folder}. Install the Debian "
        f"package (`apt-get install dataset-fashion-mnist`, files in {FASHION_MNIST_DIR}) or "
        f"pass path= a folder holding {', '.join(FASHION_MNIST_FILES.values())}. Nothing is "
        f"downloaded and no other data is substituted.")
  arrays = {key: read_idx(folder / name, limit) for key, name in FASHION_MNIST_FILES.items()}
  splits = []
  for part in ("train", "test"):
    images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
    where = folder / FASHION_MNIST_FILES[f"{part}_images"]
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
      raise ValueError(f"{where}: images of shape {images.shape} and type {images.dtype}; "
                       f"expected (N, 28, 28) uint8.")
    if labels.ndim != 1 or len(labels) != len(images):
      raise ValueError(f"{folder / FASHION_MNIST_FILES[f'{part}_labels']}: labels of shape "
                       f"{labels.shape} for {len(images)} images; expected ({len(images)},).")
    if labels.size and labels.max() > 9:
      raise ValueError(f"{folder / FASHION_MNIST_FILES[f'{part}_labels']}: label "
                       f"{int(labels.max())} out of range; valid: 0..9.")
    splits.append(((images.astype(np.float32) / 255.0)[..., None], labels.astype(np.int64)))
  return splits[0], splits[1]


def load_digits(test_fraction: float = 0.25, seed: int = 0) -> tuple[Split, Split]:
  """scikit-learn's 8x8 digits (1797 images, bundled with scikit-learn: no download).

  Shuffled with `numpy.random.default_rng(seed)` and split so the last `test_fraction` is the
  test set. Returns `((x_train, y_train), (x_test, y_test))`: float32 `(N, 8, 8, 1)` in [0, 1]
  and int64 labels in 0..9.
  """
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"load_digits: test_fraction={test_fraction!r} is invalid; valid: 0 < f < 1.")
  from sklearn.datasets import load_digits as sk_load_digits
  data: Any = sk_load_digits()
  order = np.random.default_rng(seed).permutation(len(data.target))
  x = (data.images[order] / 16.0).astype(np.float32)[..., None]
  y = data.target[order].astype(np.int64)
  n_test = int(round(len(y) * test_fraction))
  cut = len(y) - n_test
  return (x[:cut], y[:cut]), (x[cut:], y[cut:])


CIFAR10_DIR = "~/.keras/datasets/cifar-10-batches-py"
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
DATASETS = ("fashion_mnist", "cifar10", "digits", "synthetic", "npz", "image_folder")
USER_DATA = ("npz", "image_folder")  # data.path is required and names the user's file/folder
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def load_cifar10(path: str | os.PathLike | None = None) -> tuple[Split, Split]:
  """CIFAR-10 from a local copy of the python version (`cifar-10-batches-py`).

  Args:
    path: the folder holding `data_batch_1..5` and `test_batch`; default Keras' cache folder
      `~/.keras/datasets/cifar-10-batches-py` (where `keras.datasets.cifar10` puts it).

  Returns:
    `((x_train, y_train), (x_test, y_test))`: float32 `(N, 32, 32, 3)` in [0, 1], int64 labels.
  """
  import pickle
  folder = pathlib.Path(os.path.expanduser(CIFAR10_DIR if path is None else path))
  missing = [name for name in CIFAR10_FILES if not (folder / name).is_file()]
  if missing:
    raise FileNotFoundError(
        f"CIFAR-10: {', '.join(missing)} not found in {folder}. Unpack "
        f"https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz there (or call "
        f"keras.datasets.cifar10.load_data() once, which caches it in {CIFAR10_DIR}), or give "
        f"the folder holding {', '.join(CIFAR10_FILES)}. No other data is substituted.")
  parts = {}
  for name in CIFAR10_FILES:
    with open(folder / name, "rb") as f:
      batch = pickle.load(f, encoding="bytes")
    try:
      data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    except KeyError as e:
      raise ValueError(f"{folder / name}: not a CIFAR-10 python batch (no {e} entry).") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
      raise ValueError(f"{folder / name}: data of shape {data.shape} with {len(labels)} labels; "
                       f"expected (N, 3072) uint8 and N labels.")
    parts[name] = (data, labels)

  def split(names):
    data = np.concatenate([parts[n][0] for n in names])
    labels = np.concatenate([parts[n][1] for n in names])
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return (images.astype(np.float32) / 255.0), labels.astype(np.int64)

  return split(CIFAR10_FILES[:5]), split(CIFAR10_FILES[5:])


def synthetic(shape: tuple[int, int, int] = (8, 8, 1), classes: int = 4, train: int = 512,
              test: int = 128, seed: int = 0) -> tuple[Split, Split]:
  """A learnable synthetic set for tests: each class is a fixed random image plus noise."""
  rng = np.random.default_rng(seed)
  prototypes = rng.uniform(0.0, 1.0, (classes, *shape)).astype(np.float32)

  def draw(n):
    labels = rng.integers(0, classes, n)
    noise = rng.normal(0.0, 0.25, (n, *shape)).astype(np.float32)
    return np.clip(prototypes[labels] + noise, 0.0, 1.0), labels.astype(np.int64)

  return draw(train), draw(test)


def load_dataset(name: str, path: str | None = None, download: bool = False,
                 seed: int = 0) -> tuple[Split, Split]:
  """A dataset by name (`DATASETS`) from local files, or Keras' download when `download`.

  Local files are always tried first; `download=True` lets Keras fetch Fashion-MNIST or
  CIFAR-10 (into its cache) when they are missing. Never substitutes other data.
  """
  if name == "digits":
    return load_digits(seed=seed)
  if name == "synthetic":
    return synthetic(seed=seed)
  if name in USER_DATA:
    if not path:
      raise ValueError(f"dataset {name!r} needs a path: the .npz file or the image folder.")
    return load_npz(path) if name == "npz" else load_image_folder(path, seed=seed)
  if name not in ("fashion_mnist", "cifar10"):
    raise ValueError(f"dataset {name!r} is unknown; valid: {', '.join(DATASETS)}.")
  local = load_fashion_mnist if name == "fashion_mnist" else load_cifar10
  try:
    return local(path or None)
  except FileNotFoundError:
    if not download or path:
      raise
  import keras  # Keras 3's downloader; importing it does not change tf.keras.
  (x, y), (xt, yt) = getattr(keras.datasets, name).load_data()
  return _scaled(x, y), _scaled(xt, yt)


def _scaled(images: np.ndarray, labels: np.ndarray) -> Split:
  x = images.astype(np.float32) / 255.0
  return (x[..., None] if x.ndim == 3 else x), labels.reshape(-1).astype(np.int64)


def _images(images: np.ndarray, where: str) -> np.ndarray:
  """float32 NHWC in [0, 1] from uint8 (scaled) or float images (kept); HW gets a channel."""
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4:
    raise ValueError(f"{where}: images of shape {images.shape}; valid: (N, H, W) or (N, H, W, C).")
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 255.0
  if not np.issubdtype(images.dtype, np.floating) or not np.all(np.isfinite(images)):
    raise ValueError(f"{where}: {images.dtype} images with non-finite values or of a non-image "
                     f"type; valid: uint8 (scaled to [0, 1]) or finite floats (kept).")
  return images.astype(np.float32)


def _labels(labels: np.ndarray, count: int, where: str) -> np.ndarray:
  labels = np.asarray(labels).reshape(-1) if np.ndim(labels) == 2 and np.shape(labels)[1] == 1 \
      else np.asarray(labels)
  if labels.ndim != 1 or len(labels) != count:
    raise ValueError(f"{where}: labels of shape {labels.shape} for {count} images; valid: one "
                     f"integer class per image.")
  if not np.issubdtype(labels.dtype, np.integer) or (labels.size and labels.min() < 0):
    raise ValueError(f"{where}: labels must be integers >= 0 (class indices), got "
                     f"{labels.dtype}{' with negatives' if labels.size else ''}.")
  return labels.astype(np.int64)


def load_npz(path: str | os.PathLike) -> tuple[Split, Split]:
  """A user's data set from one `.npz` file holding `x_train, y_train, x_test, y_test`."""
  path = pathlib.Path(path).expanduser()
  try:
    with np.load(path, allow_pickle=False) as data:
      missing = [k for k in NPZ_KEYS if k not in data.files]
      if missing:
        raise ValueError(f"{path}: no array {', '.join(missing)}; valid: an .npz with "
                         f"{', '.join(NPZ_KEYS)} (found {', '.join(data.files) or 'nothing'}).")
      arrays = {k: data[k] for k in NPZ_KEYS}
  except (OSError, EOFError) as e:
    raise ValueError(f"{path}: cannot read it as an .npz file: {e}") from None
  splits = []
  for part in ("train", "test"):
    x = _images(arrays[f"x_{part}"], f"{path}: x_{part}")
    splits.append((x, _labels(arrays[f"y_{part}"], len(x), f"{path}: y_{part}")))
  if splits[0][0].shape[1:] != splits[1][0].shape[1:]:
    raise ValueError(f"{path}: x_train images are {splits[0][0].shape[1:]} but x_test images are "
                     f"{splits[1][0].shape[1:]}; valid: one image shape.")
  return splits[0], splits[1]


def load_image_folder(path: str | os.PathLike, test_fraction: float = 0.2,
                      seed: int = 0) -> tuple[Split, Split]:
  """A user's images, one subfolder per class (sorted names are the class indices, as in
  `keras.utils.image_dataset_from_directory`). With `train/` and `test/` subfolders those are
  the splits (same class folders in both); otherwise `test_fraction` of each class is held out
  with `seed`. Every image must have the size and channel count of the first."""
  root = pathlib.Path(path).expanduser()
  if (root / "train").is_dir() and (root / "test").is_dir():
    train_classes, train = _class_files(root / "train")
    test_classes, test = _class_files(root / "test")
    if train_classes != test_classes:
      raise ValueError(f"{root}: train/ has classes {train_classes} but test/ has "
                       f"{test_classes}; valid: the same class folders in both.")
  else:
    _, files = _class_files(root)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in sorted({label for _, label in files}):
      mine = [f for f in files if f[1] == label]
      order = rng.permutation(len(mine))
      cut = int(round(len(mine) * test_fraction))
      test += [mine[i] for i in order[:cut]]
      train += [mine[i] for i in order[cut:]]
  return _read_images(train), _read_images(test)


def _class_files(folder: pathlib.Path) -> tuple[list[str], list[tuple[pathlib.Path, int]]]:
  classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
  if len(classes) < 2:
    raise ValueError(f"{folder}: {len(classes)} class subfolder(s); valid: one subfolder per "
                     f"class (at least 2), each holding {'/'.join(IMAGE_SUFFIXES)} images.")
  files = [(f, label) for label, name in enumerate(classes)
           for f in sorted((folder / name).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
  empty = [name for label, name in enumerate(classes) if not any(l == label for _, l in files)]
  if empty:
    raise ValueError(f"{folder}: class folder(s) {empty} hold no image "
                     f"({'/'.join(IMAGE_SUFFIXES)}).")
  return classes, files


def _read_images(files: list[tuple[pathlib.Path, int]]) -> Split:
  import tensorflow as tf
  images = []
  for path, _ in files:
    try:
      image = tf.io.decode_image(tf.io.read_file(str(path)), expand_animations=False).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
      raise ValueError(f"{path}: cannot decode it as an image: {e.message}") from None
    if images and image.shape != images[0].shape:
      raise ValueError(f"{path}: an image of shape {image.shape}, but {files[0][0]} is "
                       f"{images[0].shape}; valid: one size and channel count for all images.")
    images.append(image)
  x = np.stack(images).astype(np.float32) / 255.0
  return x, np.array([label for _, label in files], np.int64)

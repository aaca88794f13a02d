"""Offline datasets: the IDX parser on tiny files, Fashion-MNIST from Debian's package, digits."""

import gzip
import pathlib

import numpy as np
import pytest

from xbar_tfmot.app import datasets

HAVE_FASHION = all((pathlib.Path(datasets.FASHION_MNIST_DIR) / f).is_file()
                   for f in datasets.FASHION_MNIST_FILES.values())
needs_fashion = pytest.mark.skipif(
    not HAVE_FASHION,
    reason="dataset-fashion-mnist not installed (apt-get install dataset-fashion-mnist)")


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
  header = bytes([0, 0, code, array.ndim]) + b"".join(
      int(d).to_bytes(4, "big") for d in array.shape)
  return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path: pathlib.Path, payload: bytes) -> pathlib.Path:
  if path.suffix == ".gz":
    with gzip.open(path, "wb") as f:
      f.write(payload)
  else:
    path.write_bytes(payload)
  return path


def fake_fashion(folder: pathlib.Path, n: int = 5,
                 label_max: int = 9) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
  images[0, 0, 0], images[0, 0, 1] = 0, 255
  labels = np.linspace(0, label_max, n).astype(np.uint8)
  for part in ("train", "test"):
    write(folder / datasets.FASHION_MNIST_FILES[f"{part}_images"], idx_bytes(images))
    write(folder / datasets.FASHION_MNIST_FILES[f"{part}_labels"], idx_bytes(labels))
  return images, labels


# --- IDX parser ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_read_idx_round_trips_uint8_and_wider_types(tmp_path, name):
  images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  got = datasets.read_idx(write(tmp_path / name, idx_bytes(images)))
  assert got.dtype == np.uint8 and got.shape == (2, 3, 4)
  np.testing.assert_array_equal(got, images)
  ints = np.array([[-5, 70000], [3, -1]], dtype=np.int32)
  got = datasets.read_idx(write(tmp_path / ("i" + name), idx_bytes(ints, 0x0C)))
  np.testing.assert_array_equal(got, ints)  # big-endian on disk, native in memory
  assert got.dtype == np.dtype("int32")
  assert datasets.read_idx(tmp_path / name, limit=1).shape == (1, 3, 4)


@pytest.mark.parametrize("header,match", [
    (bytes([0x1F, 0x8B, 0x08, 0x03]), "bad IDX magic number 0x1f8b0803"),  # e.g. double gzip
    (bytes([0, 0, 0x07, 0x01]), "bad IDX magic number 0x00000701"),  # unknown type code
    (bytes([0, 0, 0x08, 0x00]), "bad IDX magic number"),  # no dimensions
])
def test_read_idx_rejects_a_bad_magic_number(tmp_path, header, match):
  path = write(tmp_path / "bad.idx.gz", header + (3).to_bytes(4, "big") + b"\x00\x01\x02")
  with pytest.raises(ValueError, match=match) as info:
    datasets.read_idx(path)
  assert str(path) in str(info.value) and "0x00000803" in str(info.value)


def test_read_idx_rejects_truncated_and_oversized_payloads(tmp_path):
  good = idx_bytes(np.zeros((2, 3), np.uint8))
  with pytest.raises(ValueError, match=r"payload is 5 bytes; the header's shape \(2, 3\)"):
    datasets.read_idx(write(tmp_path / "short.idx", good[:-1]))
  with pytest.raises(ValueError, match="payload is 7 bytes"):
    datasets.read_idx(write(tmp_path / "long.idx", good + b"\x00"))
  with pytest.raises(ValueError, match="too short for an IDX header"):
    datasets.read_idx(write(tmp_path / "tiny.idx", b"\x00\x00"))
  with pytest.raises(ValueError, match="declares 3 dimensions"):
    datasets.read_idx(write(tmp_path / "hdr.idx", bytes([0, 0, 8, 3]) + b"\x00" * 4))


def test_read_idx_rejects_a_file_that_is_not_gzip(tmp_path):
  path = tmp_path / "plain.idx.gz"
  path.write_bytes(idx_bytes(np.zeros(3, np.uint8)))
  with pytest.raises(ValueError, match="cannot read it as gzipped IDX"):
    datasets.read_idx(path)


# --- Fashion-MNIST -------------------------------------------------------------------------


def test_fashion_mnist_from_a_given_folder(tmp_path):
  images, labels = fake_fashion(tmp_path)
  (x, y), (xt, yt) = datasets.load_fashion_mnist(tmp_path)
  assert x.shape == (5, 28, 28, 1) and x.dtype == np.float32 and y.dtype == np.int64
  np.testing.assert_allclose(x[..., 0] * 255.0, images, atol=1e-4)
  assert x.min() == 0.0 and x.max() == 1.0
  np.testing.assert_array_equal(y, labels)
  assert xt.shape == x.shape and yt.shape == y.shape
  (x2, y2), (xt2, _) = datasets.load_fashion_mnist(str(tmp_path), limit=2)
  assert len(x2) == len(y2) == len(xt2) == 2


def test_fashion_mnist_missing_folder_says_how_to_get_it(tmp_path):
  folder = tmp_path / "nowhere"
  with pytest.raises(FileNotFoundError) as info:
    datasets.load_fashion_mnist(folder)
  text = str(info.value)
  assert "apt-get install dataset-fashion-mnist" in text and str(folder) in text
  assert "train-images-idx3-ubyte.gz" in text and "path=" in text


def test_fashion_mnist_one_missing_file_is_named_and_no_fallback(tmp_path):
  fake_fashion(tmp_path)
  (tmp_path / datasets.FASHION_MNIST_FILES["test_labels"]).unlink()
  with pytest.raises(FileNotFoundError,
                     match=r"^Fashion-MNIST: t10k-labels-idx1-ubyte.gz not found"):
    datasets.load_fashion_mnist(tmp_path)


def test_fashion_mnist_rejects_wrong_shapes_labels_and_limit(tmp_path):
  fake_fashion(tmp_path)
  write(tmp_path / datasets.FASHION_MNIST_FILES["train_labels"], idx_bytes(np.zeros(4, np.uint8)))
  with pytest.raises(ValueError, match=r"labels of shape \(4,\) for 5 images"):
    datasets.load_fashion_mnist(tmp_path)
  fake_fashion(tmp_path, label_max=10)
  with pytest.raises(ValueError, match="label 10 out of range; valid: 0..9"):
    datasets.load_fashion_mnist(tmp_path)
  fake_fashion(tmp_path)
  write(tmp_path / datasets.FASHION_MNIST_FILES["test_images"],
        idx_bytes(np.zeros((5, 32, 32), np.uint8)))
  with pytest.raises(ValueError, match=r"expected \(N, 28, 28\) uint8"):
    datasets.load_fashion_mnist(tmp_path)
  for bad in (0, -1, 2.5, True):
    with pytest.raises(ValueError, match="limit=.* is invalid"):
      datasets.load_fashion_mnist(tmp_path, limit=bad)


@needs_fashion
def test_fashion_mnist_debian_package():
  (x, y), (xt, yt) = datasets.load_fashion_mnist()
  assert x.shape == (60000, 28, 28, 1) and xt.shape == (10000, 28, 28, 1)
  assert x.dtype == xt.dtype == np.float32
  assert 0.0 == x.min() and x.max() == 1.0 and 0.0 <= xt.min() and xt.max() <= 1.0
  assert y.shape == (60000,) and yt.shape == (10000,)
  # balanced: 6000 / 1000 images of each of the 10 classes
  np.testing.assert_array_equal(np.bincount(y), np.full(10, 6000))
  np.testing.assert_array_equal(np.bincount(yt), np.full(10, 1000))
  (xl, yl), (xtl, ytl) = datasets.load_fashion_mnist(limit=100)
  np.testing.assert_array_equal(xl, x[:100])
  np.testing.assert_array_equal(ytl, yt[:100])


# --- digits --------------------------------------------------------------------------------


def test_digits_split_shapes_range_and_fixed_seed():
  (x, y), (xt, yt) = datasets.load_digits()
  assert x.shape == (1348, 8, 8, 1) and xt.shape == (449, 8, 8, 1)
  assert x.dtype == np.float32 and y.dtype == np.int64
  assert x.min() == 0.0 and x.max() == 1.0 and xt.max() <= 1.0
  assert set(np.unique(y)) == set(range(10)) and set(np.unique(yt)) <= set(range(10))
  (x2, y2), (xt2, yt2) = datasets.load_digits()
  np.testing.assert_array_equal(x, x2)
  np.testing.assert_array_equal(yt, yt2)
  (_, y3), _ = datasets.load_digits(seed=1)
  assert not np.array_equal(y, y3)
  # train and test are disjoint parts of one shuffle: together they hold every image once
  from sklearn.datasets import load_digits
  assert len(y) + len(yt) == len(load_digits().target)
  with pytest.raises(ValueError, match="test_fraction=1.0 is invalid"):
    datasets.load_digits(test_fraction=1.0)


def fake_cifar(folder, n=3, seed=0):
  """Writes CIFAR-10 python batches of `n` random images each; returns the raw arrays."""
  import pickle
  rng = np.random.default_rng(seed)
  raw = {}
  for name in datasets.CIFAR10_FILES:
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    with open(folder / name, "wb") as f:
      pickle.dump({b"data": data, b"labels": labels}, f)
    raw[name] = (data, labels)
  return raw


def test_cifar10_from_a_local_copy_is_nhwc(tmp_path):
  raw = fake_cifar(tmp_path)
  (x, y), (xt, yt) = datasets.load_cifar10(tmp_path)
  assert x.shape == (15, 32, 32, 3) and xt.shape == (3, 32, 32, 3)
  data, labels = raw["data_batch_2"]
  # pixel (row 4, col 7) of channel 1 (green) of the first image of batch 2
  assert x[3, 4, 7, 1] == pytest.approx(data[0, 1024 + 4 * 32 + 7] / 255.0)
  assert y[3] == labels[0] and y.dtype == np.int64
  assert list(yt) == raw["test_batch"][1]


def test_cifar10_missing_files_say_how_to_get_them(tmp_path):
  fake_cifar(tmp_path)
  (tmp_path / "data_batch_3").unlink()
  with pytest.raises(FileNotFoundError, match=r"^CIFAR-10: data_batch_3 not found in .*"
                     r"cifar-10-python\.tar\.gz"):
    datasets.load_cifar10(tmp_path)
  with pytest.raises(FileNotFoundError, match="CIFAR-10: data_batch_3 not found"):
    datasets.load_dataset("cifar10", str(tmp_path), download=True)  # a given path never downloads


def test_synthetic_is_learnable_and_seeded():
  (x, y), (xt, yt) = datasets.synthetic(seed=3)
  (x2, _), _ = datasets.synthetic(seed=3)
  np.testing.assert_array_equal(x, x2)
  assert x.shape == (512, 8, 8, 1) and x.min() >= 0 and x.max() <= 1
  means = np.stack([x[y == c].mean(axis=0) for c in range(4)])
  nearest = np.argmin(((xt[:, None] - means[None]) ** 2).sum(axis=(2, 3, 4)), axis=1)
  assert np.mean(nearest == yt) > 0.9


def test_load_dataset_unknown_name():
  with pytest.raises(ValueError, match="dataset 'mnist' is unknown; valid: fashion_mnist, cifar10"):
    datasets.load_dataset("mnist")

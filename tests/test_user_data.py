"""Data users bring to xbar-prune: an .npz file and an image folder, with input shape and
class count taken from the data and clear errors (file, key or folder named) otherwise."""

import pathlib

import numpy as np
import pytest
import tensorflow as tf

from xbar_tfmot.app import datasets, pipeline, preparation
from xbar_tfmot.app.configuration import ConfigError, defaults

ROOT = pathlib.Path(__file__).resolve().parents[1]


def write_npz(path, **overrides):
  rng = np.random.default_rng(0)
  arrays = {"x_train": rng.integers(0, 256, (12, 6, 5), dtype=np.uint8),
            "y_train": np.arange(12) % 3,
            "x_test": rng.integers(0, 256, (4, 6, 5), dtype=np.uint8),
            "y_test": np.arange(4) % 3}
  arrays.update(overrides)
  np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
  return arrays


def test_npz_is_read_scaled_with_a_channel_axis(tmp_path):
  arrays = write_npz(tmp_path / "mine.npz")
  (x, y), (xt, yt) = datasets.load_npz(tmp_path / "mine.npz")
  assert x.shape == (12, 6, 5, 1) and xt.shape == (4, 6, 5, 1) and x.dtype == np.float32
  np.testing.assert_allclose(x[..., 0] * 255.0, arrays["x_train"], atol=1e-4)
  np.testing.assert_array_equal(y, arrays["y_train"])
  np.testing.assert_array_equal(yt, arrays["y_test"])


@pytest.mark.parametrize("overrides, match", [
    ({"y_test": None}, "no array y_test"),
    ({"y_train": np.arange(11)}, "y_train: labels of shape \\(11,\\) for 12 images"),
    ({"y_train": np.linspace(0, 1, 12)}, "y_train: labels must be integers"),
    ({"x_test": np.zeros((4, 6, 6), np.uint8)}, "x_train images are \\(6, 5, 1\\) but x_test"),
    ({"x_train": np.full((12, 6, 5), np.nan)}, "x_train: float64 images with non-finite"),
])
def test_bad_npz_names_file_and_array(tmp_path, overrides, match):
  write_npz(tmp_path / "bad.npz", **overrides)
  with pytest.raises(ValueError, match=f"bad.npz.*{match}"):
    datasets.load_npz(tmp_path / "bad.npz")


def write_images(folder: pathlib.Path, classes=("cat", "dog"), per_class=3, shape=(5, 4, 3)):
  for label, name in enumerate(classes):
    (folder / name).mkdir(parents=True)
    for i in range(per_class):
      pixels = np.full(shape, 40 * label + i, np.uint8)
      tf.io.write_file(str(folder / name / f"{i}.png"), tf.io.encode_png(pixels))


def test_image_folder_with_train_and_test(tmp_path):
  write_images(tmp_path / "train", per_class=3)
  write_images(tmp_path / "test", per_class=1)
  (x, y), (xt, yt) = datasets.load_image_folder(tmp_path)
  assert x.shape == (6, 5, 4, 3) and xt.shape == (2, 5, 4, 3)
  np.testing.assert_array_equal(y, [0, 0, 0, 1, 1, 1])  # sorted class names: cat 0, dog 1
  np.testing.assert_allclose(x[:, 0, 0, 0] * 255.0, [0, 1, 2, 40, 41, 42], atol=1e-4)
  np.testing.assert_array_equal(yt, [0, 1])


def test_one_image_tree_is_split_per_class_with_the_seed(tmp_path):
  write_images(tmp_path, per_class=5)
  (x, y), (xt, yt) = datasets.load_image_folder(tmp_path, seed=3)
  assert np.bincount(yt).tolist() == [1, 1] and np.bincount(y).tolist() == [4, 4]
  again = datasets.load_image_folder(tmp_path, seed=3)
  np.testing.assert_array_equal(again[1][0], xt)
  seen = sorted(np.round(np.concatenate([x, xt])[:, 0, 0, 0] * 255).astype(int).tolist())
  assert seen == [0, 1, 2, 3, 4, 40, 41, 42, 43, 44]  # every image once


def test_bad_image_folders(tmp_path):
  write_images(tmp_path / "a" / "train", classes=("cat", "dog"))
  write_images(tmp_path / "a" / "test", classes=("cat", "cow"))
  with pytest.raises(ValueError, match="train/ has classes \\['cat', 'dog'\\] but test/"):
    datasets.load_image_folder(tmp_path / "a")
  write_images(tmp_path / "b", classes=("only",))
  with pytest.raises(ValueError, match="1 class subfolder"):
    datasets.load_image_folder(tmp_path / "b")
  write_images(tmp_path / "c")
  tf.io.write_file(str(tmp_path / "c" / "dog" / "odd.png"),
                   tf.io.encode_png(np.zeros((7, 4, 3), np.uint8)))
  with pytest.raises(ValueError, match="odd.png: an image of shape \\(7, 4, 3\\)"):
    datasets.load_image_folder(tmp_path / "c")


def config_for(tmp_path, name, path, **fields):
  c = defaults()
  c.workdir = str(tmp_path / "run")
  c.data.name, c.data.path = name, str(path)
  c.model.name, c.model.width = "vgg8", 0.125
  c.chip.spec = "72x4,mapping=direct,kin=8,kout=4"
  for key, value in fields.items():
    section, field = key.split("__")
    c[section][field] = value
  return c


def test_pipeline_takes_shape_and_classes_from_the_users_data(tmp_path):
  rng = np.random.default_rng(1)
  np.savez(tmp_path / "d.npz", x_train=rng.random((20, 16, 16, 2), np.float32),
           y_train=np.arange(20) % 5, x_test=rng.random((5, 16, 16, 2), np.float32),
           y_test=np.arange(5))
  run = pipeline.Pipeline(config_for(tmp_path, "npz", tmp_path / "d.npz"))
  run.prepare()
  model = run.context.fresh_model
  assert tuple(model.input_shape[1:]) == (16, 16, 2) and model.output_shape[-1] == 5


def test_sorted_user_data_gives_mixed_subset_and_validation_split(tmp_path):
  """A class-sorted .npz: `data.train_size` and the validation split are drawn from the
  images in a seeded random order, not the file's first and last images (one class each)."""
  x = np.arange(60, dtype=np.float32).reshape(60, 1, 1, 1) * np.ones((1, 8, 8, 1), np.float32)
  np.savez(tmp_path / "s.npz", x_train=x / 60, y_train=np.repeat(np.arange(3), 20),
           x_test=x[:3] / 60, y_test=np.arange(3))
  config = config_for(tmp_path, "npz", tmp_path / "s.npz", data__train_size=40,
                      allocation__mode="sensitivity", allocation__validation_images=10)
  run = pipeline.Pipeline(config)
  data = preparation.load_data(run.config)
  (x_fit, y_fit), (x_val, y_val) = data.train, data.validation
  assert len(y_fit) == 30 and len(y_val) == 10
  assert len(set(y_fit.tolist())) == 3 and len(set(y_val.tolist())) > 1
  seen = np.concatenate([x_fit, x_val])[:, 0, 0, 0]
  assert len(set(np.round(seen * 60).astype(int).tolist())) == 40  # 40 distinct images
  again = pipeline.Pipeline(config)
  np.testing.assert_array_equal(preparation.load_data(again.config).train[1], y_fit)  # the same for the seed


@pytest.mark.parametrize("name, path, match", [
    ("npz", "missing.npz", "config.data.path='.*missing.npz': no such file"),
    ("image_folder", "", "config.data.path='': valid: the folder of class subfolders"),
])
def test_user_data_config_errors(tmp_path, name, path, match):
  with pytest.raises(ConfigError, match=match):
    pipeline.Pipeline(config_for(tmp_path, name, tmp_path / path if path else "")).prepare()


def test_a_model_that_does_not_fit_the_data_is_refused(tmp_path):
  import keras
  write_npz(tmp_path / "d.npz")
  model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3),
                            keras.layers.Flatten(), keras.layers.Dense(3)])
  model.save(tmp_path / "m.keras")
  config = config_for(tmp_path, "npz", tmp_path / "d.npz", model__file=str(tmp_path / "m.keras"))
  config.flavour = "keras3"
  with pytest.raises(ConfigError, match="takes inputs \\(8, 8, 1\\) but npz images are "
                                        "\\(6, 5, 1\\)"):
    pipeline.Pipeline(config).prepare()


@pytest.mark.parametrize("outputs", [2, 3])
def test_a_model_needs_one_output_per_label_up_to_the_largest(tmp_path, outputs):
  """Labels 0..2 need three outputs: two are refused, naming both counts; three are taken."""
  import keras
  write_npz(tmp_path / "d.npz")
  model = keras.Sequential([keras.Input((6, 5, 1)), keras.layers.Conv2D(4, 3),
                            keras.layers.Flatten(), keras.layers.Dense(outputs)])
  model.save(tmp_path / "m.keras")
  config = config_for(tmp_path, "npz", tmp_path / "d.npz", model__file=str(tmp_path / "m.keras"))
  config.flavour = "keras3"
  run = pipeline.Pipeline(config)
  if outputs == 2:
    with pytest.raises(ConfigError, match="has 2 outputs but npz has labels up to 2"):
      run.prepare()
  else:
    run.prepare()
    assert run.context.fresh_model.output_shape[-1] == 3

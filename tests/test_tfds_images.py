"""The tfds adapter, offline through tensorflow_datasets.testing.mock_data."""

import pytest
import tensorflow_datasets as tfds

from fmkeras.data.tfds_images import is_tfds_name, tfds_image_dataset
from fmkeras.errors import DataError


def test_mnist_mock_batches_and_class_names():
    with tfds.testing.mock_data(num_examples=10):
        ds, names = tfds_image_dataset("tfds:mnist", 12, batch_size=4, label_mode="categorical")
        images, labels = next(iter(ds))
    assert names == [str(i) for i in range(10)]
    assert images.shape == (4, 12, 12, 1) and labels.shape == (4, 10)
    assert 0.0 <= float(images.numpy().min()) and float(images.numpy().max()) <= 1.0


def test_cifar10_mock_to_grayscale():
    with tfds.testing.mock_data(num_examples=6):
        ds, names = tfds_image_dataset("cifar10", 8, split="test", batch_size=3,
                                       color_mode="grayscale")
        images, labels = next(iter(ds))
    assert len(names) == 10  # mock metadata has no label names file
    assert images.shape == (3, 8, 8, 1) and labels.dtype == "int32"


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(DataError, match="Cannot load tfds dataset 'no_such_dataset_xyz'"):
        tfds_image_dataset("tfds:no_such_dataset_xyz", 8, download=False)


def test_is_tfds_name():
    assert is_tfds_name("tfds:mnist") and not is_tfds_name("data/digits")


def test_builders_can_read_their_download_checksums(tmp_path):
    # tensorflow-datasets 4.9 imports importlib_resources here, which it declares for
    # Python < 3.9 only and etils 1.15 no longer brings: without it every download failed
    # with ModuleNotFoundError before a byte was fetched (setup.cfg installs it).
    builder = tfds.builder("cifar10", data_dir=str(tmp_path))
    assert any("cifar-10" in url for url in builder.url_infos)


def test_failed_download_names_the_dataset_and_the_offline_way(monkeypatch, tmp_path):
    import requests

    def offline(*args, **kwargs):
        raise requests.exceptions.ConnectionError(
            "HTTPSConnectionPool(host='www.cs.toronto.edu', port=443): Max retries exceeded\n"
            "(Caused by NameResolutionError)")

    monkeypatch.setattr(tfds, "load", offline)
    with pytest.raises(DataError) as info:
        tfds_image_dataset("tfds:cifar10", 8, data_dir=str(tmp_path))
    message = str(info.value)
    assert "Cannot download or prepare tfds dataset 'cifar10'" in message
    assert "ConnectionError: HTTPSConnectionPool(host='www.cs.toronto.edu'" in message
    assert "tfds build cifar10" in message and str(tmp_path) in message
    assert "\n" not in message

"""Directory indexing and the native tf.data image pipeline."""

import os
import warnings

import numpy as np
import pytest
import tensorflow as tf
from conftest import DIGITS, write_corrupt_jpeg, write_image_folder
from PIL import Image

from fmkeras.data import images
from fmkeras.errors import DataError


def test_index_digits_matches_files():
    index = images.index_directory(os.path.join(DIGITS, "train"))
    assert index.class_names == [str(i) for i in range(10)]
    assert len(index) == 1437
    assert index.filenames[0] == os.path.join("0", "0000.png")
    assert np.all(np.diff(index.labels) >= 0)  # class order, then file order


def test_junk_and_hidden_files_are_ignored(tmp_path):
    root = write_image_folder(tmp_path / "d", per_class=2)
    for junk in (".DS_Store", "Thumbs.db", "._img0.png", "desktop.ini", "notes.txt"):
        (tmp_path / "d" / "a" / junk).write_bytes(b"junk")
    os.makedirs(tmp_path / "d" / "a" / ".hidden")
    Image.new("RGB", (4, 4)).save(tmp_path / "d" / "a" / ".hidden" / "x.png")
    os.makedirs(tmp_path / "d" / ".git")
    index = images.index_directory(root)
    assert index.class_names == ["a", "b"]
    assert sorted(index.filenames) == sorted(
        [os.path.join("a", "img0.png"), os.path.join("a", "img1.png"),
         os.path.join("b", "img0.png"), os.path.join("b", "img1.png")])


def test_unicode_class_and_file_names(tmp_path):
    root = write_image_folder(tmp_path / "d", classes=("chat", "épée 猫"), per_class=2)
    os.rename(os.path.join(root, "chat", "img0.png"), os.path.join(root, "chat", "ça va.png"))
    index = images.index_directory(root)
    assert index.class_names == ["chat", "épée 猫"]
    ds = images.image_dataset(index, 8, batch_size=4)
    x, y = next(iter(ds))
    assert x.shape == (4, 8, 8, 3)


def test_missing_directory_error():
    with pytest.raises(DataError, match="not found.*Received: '/no/such/dir'"):
        images.index_directory("/no/such/dir")


def test_directory_without_class_folders(tmp_path):
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(DataError, match="No class folders"):
        images.index_directory(tmp_path)


def test_empty_class_folder_is_named(tmp_path):
    root = write_image_folder(tmp_path / "d")
    os.makedirs(os.path.join(root, "empty"))
    with pytest.raises(DataError, match=r"without images.*\['empty'\]"):
        images.index_directory(root)


def test_symlink_loop_does_not_hang(tmp_path):
    root = write_image_folder(tmp_path / "d", per_class=1)
    os.symlink(os.path.join(root, "a"), os.path.join(root, "a", "loop"))
    index = images.index_directory(root, follow_links=True)
    assert len(index) == 2


@pytest.mark.parametrize("mode, color_mode, channels", [
    ("L", "rgb", 3), ("RGBA", "grayscale", 1), ("RGB", "rgba", 4), ("RGB", "grayscale", 1)])
def test_color_conversion(tmp_path, mode, color_mode, channels):
    root = write_image_folder(tmp_path / "d", mode=mode, per_class=1)
    x, _ = next(iter(images.image_dataset(root, (5, 7), batch_size=2, color_mode=color_mode)))
    assert x.shape == (2, 5, 7, channels)
    assert 0.0 <= float(np.min(x)) and float(np.max(x)) <= 1.0


def test_palette_and_16_bit_images(tmp_path):
    os.makedirs(tmp_path / "d" / "a")
    Image.new("RGB", (6, 6), (255, 0, 0)).convert("P").save(tmp_path / "d" / "a" / "p.png")
    Image.fromarray(np.full((6, 6), 65535, np.uint16)).save(tmp_path / "d" / "a" / "w.png")
    x, _ = next(iter(images.image_dataset(str(tmp_path / "d"), 6, batch_size=2, rescale=1.0)))
    np.testing.assert_allclose(np.asarray(x[0, 0, 0]), [255, 0, 0], atol=1)
    np.testing.assert_allclose(np.asarray(x[1, 0, 0]), [255, 255, 255], atol=1)


def test_split_is_stratified_and_seeded():
    index = images.index_directory(os.path.join(DIGITS, "train"))
    train, val = images.split_index(index, 0.1, seed=3)
    again_train, again_val = images.split_index(index, 0.1, seed=3)
    assert val.filenames == again_val.filenames
    assert len(train) + len(val) == len(index)
    assert not set(train.filenames) & set(val.filenames)
    counts = np.bincount(val.labels, minlength=10)
    assert counts.min() >= 13 and counts.max() <= 16


def test_dataset_order_labels_and_rescale():
    index = images.index_directory(os.path.join(DIGITS, "test"))
    ds = images.image_dataset(index, 8, batch_size=64, color_mode="grayscale")
    labels = np.concatenate([y.numpy() for _, y in ds])
    np.testing.assert_array_equal(labels, index.labels)
    first = np.asarray(Image.open(index.paths[0]), np.float32) / 255.0
    x, _ = next(iter(ds))
    np.testing.assert_allclose(x[0, ..., 0], first, atol=1e-6)
    raw = images.image_dataset(index, 8, batch_size=64, color_mode="grayscale", rescale=None)
    np.testing.assert_allclose(next(iter(raw))[0][0, ..., 0], first * 255.0, atol=1e-4)


def test_shuffle_changes_per_epoch_but_is_seeded():
    index = images.index_directory(os.path.join(DIGITS, "test"))
    order = lambda ds: np.concatenate([y.numpy() for _, y in ds])  # noqa: E731
    ds = images.image_dataset(index, 8, batch_size=360, shuffle=True, seed=1, cache=False,
                              color_mode="grayscale")
    first, second = order(ds), order(ds)
    assert not np.array_equal(first, second)
    again = images.image_dataset(index, 8, batch_size=360, shuffle=True, seed=1, cache=False,
                                 color_mode="grayscale")
    np.testing.assert_array_equal(order(again), first)


def test_bad_color_mode_and_split():
    with pytest.raises(DataError, match="color_mode"):
        images.check_color_mode("cmyk")
    index = images.index_directory(os.path.join(DIGITS, "test"))
    with pytest.raises(DataError, match="validation_split"):
        images.split_index(index, 1.5, seed=0)


def test_dataset_arguments_that_would_fail_later_are_named(tmp_path):
    root = write_image_folder(tmp_path / "d", classes=("a", "b", "c"), per_class=1, size=(8, 8))
    with pytest.raises(DataError, match=r"leaves no image for validation \(images per class: "
                                        r"\[1, 1, 1\]\)"):
        images.image_dataset(root, 8, validation_split=0.2, subset="both")
    # A task's test split names its own setting (it used to say validation_split).
    with pytest.raises(DataError, match=r"data.test_split=0.2 leaves no image for test"):
        images.split_index(images.index_directory(root), 0.2, 0, "data.test_split")
    with pytest.raises(DataError, match=r"Expected data.test_split in \[0, 1\)"):
        images.split_index(images.index_directory(root), 1.0, 0, "data.test_split")
    with pytest.raises(DataError, match="Received: validation_split='0.2'"):
        images.image_dataset(root, 8, validation_split="0.2", subset="both")
    for bad in (2, 0):
        with pytest.raises(DataError, match=f"num_classes >= the 3 classes.*num_classes={bad}"):
            images.image_dataset(root, 8, num_classes=bad, label_mode="categorical")
    with pytest.raises(DataError, match="Received: seed='1'"):
        images.image_dataset(root, 8, shuffle=True, seed="1")
    # seed=None, as in Keras: a random order.
    ds = images.image_dataset(root, 8, batch_size=3, shuffle=True, seed=None)
    assert sorted(next(iter(ds))[1].numpy().tolist()) == [0, 1, 2]
    # Two calls with seed=None would split differently: validation images in training.
    for subset in ("training", "validation"):
        with pytest.raises(DataError, match=f"subset='{subset}' needs a seed.*Received: seed=None"):
            images.image_dataset(root, 8, validation_split=0.5, subset=subset, seed=None)


def test_grey_with_alpha_keeps_its_alpha_in_rgba(tmp_path):
    path = tmp_path / "la.png"
    Image.fromarray(np.dstack([np.full((4, 4), 100, np.uint8), np.full((4, 4), 7, np.uint8)]),
                    mode="LA").save(path)
    pixels = images.decode_image(tf.io.read_file(str(path)), channels=4).numpy()
    np.testing.assert_array_equal(pixels[0, 0], [100, 100, 100, 7])
    grey = tmp_path / "l.png"
    Image.fromarray(np.full((4, 4), 100, np.uint8)).save(grey)
    np.testing.assert_array_equal(
        images.decode_image(tf.io.read_file(str(grey)), channels=4).numpy()[0, 0],
        [100, 100, 100, 255])


@pytest.mark.parametrize("kwargs, match", [
    (dict(image_size=-1), "Received: image_size=-1"),
    (dict(image_size=(16,)), r"Received: image_size=\(16,\)"),
    (dict(image_size="16"), "Received: image_size='16'"),
    (dict(image_size=16, batch_size=0), "Received: batch_size=0"),
    (dict(image_size=16, batch_size=0, shuffle=True), "Received: batch_size=0"),
    (dict(image_size=16, rescale="1/255"), "Received: rescale='1/255'"),
    (dict(image_size=16, augment="flip"), "Received: augment='flip'"),
    (dict(image_size=16, augment="flip", shuffle=True), "Received: augment='flip'"),
])
def test_bad_sizes_are_refused_before_reading(kwargs, match):
    with pytest.raises(DataError, match=match):
        images.image_dataset(os.path.join(DIGITS, "test"), color_mode="grayscale", **kwargs)


def add_bad_files(folder):
    """A zero-byte file, text named .jpg, and a truncated JPEG; returns their names."""
    import io

    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image")
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(buffer, format="JPEG")
    (folder / "cut.jpg").write_bytes(buffer.getvalue()[:200])
    return ["empty.png", "text.jpg", "cut.jpg"]


def test_bad_files_are_skipped_with_one_warning(tmp_path):
    root = write_image_folder(tmp_path / "d", per_class=40)
    names = add_bad_files(tmp_path / "d" / "a")
    with pytest.warns(UserWarning, match="Skipping 3 of 83 image files") as record:
        ds = images.image_dataset(root, 8, batch_size=100)
    assert len(record) == 1
    message = str(record[0].message)
    for name in names:
        assert name in message
    assert "empty file" in message and "not a PNG" in message and "truncated JPEG" in message
    x, y = next(iter(ds))
    assert x.shape[0] == 80


@pytest.mark.parametrize("cache", [True, False])
def test_a_jpeg_only_decoding_finds_is_skipped_before_training(tmp_path, cache):
    from fmkeras.data.image_files import header_problem

    root = write_image_folder(tmp_path / "d", per_class=20, size=(8, 8))
    name = write_corrupt_jpeg(tmp_path / "d" / "a" / "zeros.jpg")
    assert header_problem(str(tmp_path / "d" / "a" / name)) is None
    with pytest.warns(UserWarning, match=f"(?s)Skipping 1 of 41.*{name}: cannot be decoded"):
        ds = images.image_dataset(root, 8, batch_size=16, cache=cache)
    assert sum(int(y.shape[0]) for _, y in ds) == 40
    with pytest.warns(UserWarning, match=name):
        kept = images.validate_index(images.index_directory(root))
    assert len(kept) == 40


def test_bytes_after_the_end_marker_are_kept_and_truncation_still_found(tmp_path):
    import io

    from fmkeras.data.image_files import header_problem

    def encoded(size, kind):
        buffer = io.BytesIO()
        pixels = np.random.default_rng(size).integers(0, 256, (size, size, 3), np.uint8)
        Image.fromarray(pixels).save(buffer, format=kind)
        return buffer.getvalue()

    root = write_image_folder(tmp_path / "d", per_class=20, size=(8, 8))
    trailer = b"SEFH" + bytes(100) + b"SEFT"  # a phone's metadata after the end marker
    (tmp_path / "d" / "a" / "phone.jpg").write_bytes(encoded(16, "JPEG") + trailer)
    (tmp_path / "d" / "a" / "extra.png").write_bytes(encoded(16, "PNG") + trailer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = images.image_dataset(root, 8, batch_size=64)
    assert sum(int(y.shape[0]) for _, y in ds) == 42
    # An EXIF thumbnail carries its own end marker; a cut main image is still truncated.
    thumbnail = encoded(8, "JPEG")
    app1 = b"\xff\xe1" + (len(thumbnail) + 8).to_bytes(2, "big") + b"Exif\0\0" + thumbnail
    main = encoded(32, "JPEG")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes((main[:2] + app1 + main[2:])[:-200])
    assert "truncated JPEG" in header_problem(str(cut))
    assert "truncated PNG" in header_problem(str(_write(tmp_path / "cut.png",
                                                          encoded(16, "PNG")[:-30])))


def _write(path, data):
    path.write_bytes(data)
    return path


def test_tiff_and_ppm_files_are_skipped_with_a_warning_not_silently(tmp_path):
    root = write_image_folder(tmp_path / "d", per_class=2, size=(8, 8))
    Image.new("RGB", (8, 8)).save(tmp_path / "d" / "a" / "scan.tif")
    Image.new("RGB", (8, 8)).save(tmp_path / "d" / "b" / "frame.ppm")
    with pytest.warns(UserWarning, match=r"2 .ppm/.tif file\(s\) were skipped: TensorFlow "
                                         r"cannot decode them; convert them to PNG"):
        index = images.index_directory(root)
    assert len(index) == 4
    only_tiff = tmp_path / "t"
    (only_tiff / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(only_tiff / "a" / "scan.tiff")
    with pytest.raises(DataError, match=r"Class folders without images.*\['a'\].*1 .tiff "
                                        r"file\(s\) were skipped"):
        images.index_directory(only_tiff)


def test_too_many_bad_files_stop_with_the_list(tmp_path):
    root = write_image_folder(tmp_path / "d", per_class=2)
    add_bad_files(tmp_path / "d" / "a")
    with pytest.raises(DataError, match="(?s)3 of 7 image files are unreadable.*text.jpg"):
        images.image_dataset(root, 8)


def test_validation_split_subsets_are_disjoint_and_complete():
    path = os.path.join(DIGITS, "test")
    train, val = images.image_dataset(path, 8, batch_size=400, color_mode="grayscale",
                                      validation_split=0.25, subset="both", seed=3)
    n_train = sum(int(y.shape[0]) for _, y in train)
    n_val = sum(int(y.shape[0]) for _, y in val)
    assert (n_train, n_val) == (270, 90)
    only_val = images.image_dataset(path, 8, batch_size=400, color_mode="grayscale",
                                    validation_split=0.25, subset="validation", seed=3)
    np.testing.assert_array_equal(next(iter(only_val))[1], next(iter(val))[1])
    with pytest.raises(DataError, match="subset"):
        images.image_dataset(path, 8, validation_split=0.2)


def test_tfds_name_through_image_dataset():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=10):
        train, val = images.image_dataset("tfds:mnist", 8, batch_size=4, color_mode="grayscale",
                                          validation_split=0.2, subset="both")
        x, _ = next(iter(train))
        assert x.shape == (4, 8, 8, 1)
        assert next(iter(val))[0].shape[1:] == (8, 8, 1)


def test_decompression_bombs_are_refused_from_the_header(tmp_path):
    import struct
    import zlib

    from fmkeras.data.image_files import header_problem

    def png(width, height):
        ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
        chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data  # noqa: E731
                                    + struct.pack(">I", zlib.crc32(kind + data)))
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
                + chunk(b"IEND", b""))

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png(100_000, 100_000))
    assert "declares 100000x100000 pixels" in header_problem(str(bomb))
    jpeg = tmp_path / "big.jpg"
    Image.new("RGB", (40, 30)).save(jpeg)
    assert header_problem(str(jpeg)) is None
    assert "declares 40x30" in header_problem(str(jpeg), max_pixels=1000)

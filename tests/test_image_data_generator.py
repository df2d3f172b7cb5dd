"""fmkeras.data.ImageDataGenerator against the legacy Keras generator."""

import math
import os

import keras
import numpy as np
import pytest
from conftest import write_corrupt_jpeg
from keras.src.legacy.preprocessing.image import ImageDataGenerator as LegacyGenerator
from PIL import Image

from fmkeras.data.image_data_generator import ImageDataGenerator
from fmkeras.errors import DataError, FmkerasError

CLASSES = ("cat", "dög", "鳥")
PER_CLASS = 5


def _save(path, array, fmt=None):
    Image.fromarray(array).save(path, fmt)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """3 classes x 5 images, 12x12 PNG and JPEG, with unicode names."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c in CLASSES:
        (root / c).mkdir()
        for i in range(PER_CLASS):
            ext = "png" if i % 2 else "jpg"
            _save(root / c / f"ïmg_{i}.{ext}", rng.integers(0, 256, (12, 12, 3), np.uint8))
    return str(root)


def _legacy_flow(directory, gen_kwargs=None, **kwargs):
    return LegacyGenerator(**(gen_kwargs or {})).flow_from_directory(directory, **kwargs)


def test_index_matches_legacy(image_dir):
    ours = ImageDataGenerator().flow_from_directory(image_dir, target_size=(12, 12))
    legacy = _legacy_flow(image_dir, target_size=(12, 12))
    assert ours.class_indices == legacy.class_indices
    assert ours.filenames == legacy.filenames
    np.testing.assert_array_equal(ours.classes, legacy.classes)
    assert (ours.samples, ours.n, ours.num_classes) == (legacy.samples, legacy.n, 3)
    assert ours.image_shape == legacy.image_shape == (12, 12, 3)
    assert len(ours) == len(legacy) == 1


@pytest.mark.parametrize("subset", ["training", "validation"])
def test_validation_split_matches_legacy(image_dir, subset):
    ours = ImageDataGenerator(validation_split=0.4).flow_from_directory(
        image_dir, target_size=(12, 12), subset=subset)
    legacy = _legacy_flow(image_dir, dict(validation_split=0.4), target_size=(12, 12),
                          subset=subset)
    assert ours.filenames == legacy.filenames
    np.testing.assert_array_equal(ours.classes, legacy.classes)


@pytest.mark.parametrize("class_mode", ["categorical", "binary", "sparse", "input", None])
def test_unaugmented_batches_equal_legacy(image_dir, class_mode):
    kwargs = dict(target_size=(8, 8), batch_size=4, shuffle=False, class_mode=class_mode)
    ours = ImageDataGenerator(rescale=1 / 255).flow_from_directory(image_dir, **kwargs)
    legacy = _legacy_flow(image_dir, dict(rescale=1 / 255), **kwargs)
    assert len(ours) == math.ceil(15 / 4)
    for i in (0, len(ours) - 1):  # a full and the partial last batch
        got, expected = ours[i], legacy[i]
        got = got if isinstance(got, tuple) else (got,)
        expected = expected if isinstance(expected, tuple) else (expected,)
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            _assert_pixels_match(a, b, scale=1 / 255)


def _assert_pixels_match(got, expected, scale=1.0):
    # PNG pixels match exactly; TF's JPEG decoder (fast integer IDCT) differs
    # from PIL's by a few levels.
    np.testing.assert_allclose(got, expected, atol=5 * scale)
    assert np.mean(np.abs(got - expected) <= 1e-6) > 0.3


def test_featurewise_statistics_and_batches_equal_legacy():
    x = np.random.default_rng(1).uniform(0, 255, (10, 6, 6, 3)).astype(np.float32)
    args = dict(featurewise_center=True, featurewise_std_normalization=True, rescale=0.5)
    ours, legacy = ImageDataGenerator(**args), LegacyGenerator(**args)
    ours.fit(x)
    legacy.fit(x)
    np.testing.assert_array_equal(ours.mean, legacy.mean)
    np.testing.assert_array_equal(ours.std, legacy.std)
    got = ours.flow(x, batch_size=10, shuffle=False)[0]
    np.testing.assert_allclose(got, legacy.flow(x, batch_size=10, shuffle=False)[0], atol=1e-5)


def test_samplewise_and_channels_first_match_legacy():
    x = np.random.default_rng(2).uniform(0, 255, (4, 3, 5, 5)).astype(np.float32)
    args = dict(samplewise_center=True, samplewise_std_normalization=True,
                data_format="channels_first")
    ours = ImageDataGenerator(**args).flow(x, np.arange(4), batch_size=4, shuffle=False)
    legacy = LegacyGenerator(**args).flow(x, np.arange(4), batch_size=4, shuffle=False)
    assert ours.image_shape == (3, 5, 5)
    np.testing.assert_allclose(ours[0][0], legacy[0][0], atol=1e-5)
    np.testing.assert_array_equal(ours[0][1], legacy[0][1])


def test_same_seed_and_epoch_same_batches_new_epoch_new_augmentation(image_dir):
    gen = ImageDataGenerator(rotation_range=30, zoom_range=0.2, horizontal_flip=True)

    def flow():
        return gen.flow_from_directory(image_dir, target_size=(8, 8), batch_size=4, seed=3)

    first, second = flow(), flow()
    epoch0 = [first[i][0] for i in range(len(first))]
    second[2]  # any access order gives the same batches
    for i in reversed(range(len(second))):
        np.testing.assert_array_equal(second[i][0], epoch0[i])
    first.on_epoch_end()
    assert not np.array_equal(first[0][0], epoch0[0])
    # as_dataset: each pass over it is the next epoch, batch for batch the same.
    passes = first.as_dataset()
    for epoch in (0, 1):
        first._epoch = epoch
        for i, (x, _) in enumerate(passes):
            np.testing.assert_allclose(x, first[i][0], atol=1e-4)
    # next() walks epoch 0 then epoch 1, like the legacy endless iterator.
    streamed = [next(second)[0] for _ in range(len(second) + 1)]
    np.testing.assert_allclose(streamed[0], epoch0[0], atol=1e-4)
    assert streamed[-1].shape[0] == 4


def test_shuffle_false_follows_filenames(image_dir):
    it = ImageDataGenerator().flow_from_directory(
        image_dir, target_size=(12, 12), batch_size=15, shuffle=False, class_mode="sparse")
    x, y = it[0]
    np.testing.assert_array_equal(y, it.classes)
    i = next(i for i, name in enumerate(it.filenames) if name.endswith(".png"))
    image = np.asarray(Image.open(os.path.join(image_dir, it.filenames[i])).convert("RGB"))
    np.testing.assert_array_equal(x[i], image)


def test_model_fit_on_iterator_and_dataset(image_dir):
    it = ImageDataGenerator(rescale=1 / 255, horizontal_flip=True).flow_from_directory(
        image_dir, target_size=(8, 8), batch_size=4, seed=0)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile("sgd", "categorical_crossentropy")
    history = model.fit(it, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2
    model.fit(it.as_dataset(), epochs=1, shuffle=False, verbose=0)
    assert model.predict(it, verbose=0).shape == (15, 3)


def test_flow_arrays_with_labels_and_weights():
    x = np.zeros((7, 4, 4, 1), np.float32)
    it = ImageDataGenerator(width_shift_range=0.1).flow(
        x, np.arange(7), sample_weight=np.ones(7), batch_size=3, seed=1)
    assert len(it) == 3
    xb, yb, wb = it[2]
    assert xb.shape == (1, 4, 4, 1) and wb.shape == (1,)
    ys = np.concatenate([it[i][1] for i in range(3)])
    assert sorted(ys) == list(range(7))


def test_flow_gives_labels_back_as_given_and_x_in_the_generator_format():
    x = np.arange(6 * 4 * 4 * 3, dtype=np.uint8).reshape(6, 4, 4, 3)
    for y in (np.array(["cat", "dog"] * 3), np.array(["cat", "dög"] * 3, dtype=object)):
        it = ImageDataGenerator().flow(x, y, batch_size=4, shuffle=False)
        assert it[0][1].tolist() == ["cat", "dog" if y.dtype.kind == "U" else "dög"] * 2
        assert it[0][1].dtype == y.dtype and next(it)[1].dtype == y.dtype
    it = ImageDataGenerator().flow(x, batch_size=4)
    np.testing.assert_array_equal(it.x, x.astype(np.float32))
    first = ImageDataGenerator(data_format="channels_first").flow(x.transpose(0, 3, 1, 2))
    assert first.x.shape == (6, 3, 4, 4) and first[0].shape == (6, 3, 4, 4)


def test_flow_from_dataframe_with_a_dict_of_lists(image_dir):
    names = [f"{c}/ïmg_{i}.{'png' if i % 2 else 'jpg'}" for c in CLASSES for i in range(2)]
    table = {"filename": names + ["cat/missing.png"], "label": ["a", "b"] * 3 + ["a"]}
    with pytest.warns(UserWarning, match="missing.png: file not found"):
        it = ImageDataGenerator().flow_from_dataframe(
            table, image_dir, y_col="label", target_size=(6, 6), batch_size=6,
            shuffle=False, max_bad_fraction=0.5)
    assert it.class_indices == {"a": 0, "b": 1}
    assert it.filenames == names and it.classes == [0, 1] * 3
    x, y = it[0]
    assert x.shape == (6, 6, 6, 3) and y.shape == (6, 2)
    with pytest.raises(DataError, match="Column 'nope' not found"):
        ImageDataGenerator().flow_from_dataframe(table, image_dir, x_col="nope")


def test_flow_from_dataframe_splits_after_dropping_missing_files(image_dir):
    # As legacy Keras: missing files leave first, then the split is cut.
    good = [f"{c}/ïmg_{i}.{'png' if i % 2 else 'jpg'}" for c in CLASSES for i in range(4)]
    table = {"filename": [f"gone_{i}.png" for i in range(4)] + good, "class": ["a"] * 16}
    gen = ImageDataGenerator(validation_split=0.5)
    sizes = {}
    for subset in ("training", "validation"):
        with pytest.warns(UserWarning, match="gone_3.png: file not found"):
            it = gen.flow_from_dataframe(table, image_dir, target_size=(6, 6), subset=subset,
                                         shuffle=False, max_bad_fraction=0.5)
        sizes[subset] = it.filenames
    assert len(sizes["validation"]) == len(sizes["training"]) == 6
    assert sizes["validation"] + sizes["training"] == good
    # An absolute file name stays absolute next to directory=, as with os.path.join.
    absolute = {"filename": [os.path.join(image_dir, good[0])], "class": ["a"]}
    it = ImageDataGenerator().flow_from_dataframe(absolute, image_dir, target_size=(6, 6))
    assert it.filepaths == absolute["filename"]


def test_colour_kinds_convert_to_the_color_mode(tmp_path):
    rng = np.random.default_rng(3)
    (tmp_path / "a").mkdir()
    grey = rng.integers(0, 256, (5, 5), np.uint8)
    _save(tmp_path / "a" / "grey.png", grey)
    _save(tmp_path / "a" / "rgba.png", rng.integers(0, 256, (5, 5, 4), np.uint8))
    Image.fromarray(grey).convert("P").save(tmp_path / "a" / "palette.png")
    Image.fromarray((grey.astype(np.uint16) * 257)).save(tmp_path / "a" / "sixteen.png")
    for color_mode, channels in (("rgb", 3), ("grayscale", 1), ("rgba", 4)):
        it = ImageDataGenerator().flow_from_directory(
            str(tmp_path), target_size=(5, 5), color_mode=color_mode, batch_size=4,
            shuffle=False)
        x, _ = it[0]
        assert x.shape == (4, 5, 5, channels)
    it = ImageDataGenerator().flow_from_directory(
        str(tmp_path), target_size=(5, 5), color_mode="grayscale", shuffle=False)
    x = dict(zip(it.filenames, it[0][0][..., 0]))
    np.testing.assert_allclose(x[os.path.join("a", "sixteen.png")], grey, atol=1)
    np.testing.assert_allclose(x[os.path.join("a", "grey.png")], grey)


def _bad_folder(root, good=20):
    rng = np.random.default_rng(4)
    for c in ("x", "y"):
        (root / c).mkdir()
        for i in range(good // 2):
            _save(root / c / f"{i}.png", rng.integers(0, 256, (6, 6, 3), np.uint8))
    (root / "x" / "empty.jpg").write_bytes(b"")
    (root / "x" / "text.png").write_text("not an image")
    jpeg = root / "y" / "full.jpg"
    _save(jpeg, rng.integers(0, 256, (16, 16, 3), np.uint8))
    (root / "y" / "truncated.jpg").write_bytes(jpeg.read_bytes()[:200])
    jpeg.unlink()
    # Junk the index ignores.
    (root / "x" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "x" / "Thumbs.db").write_bytes(b"junk")
    (root / "x" / "._0.png").write_bytes(b"\0\5\26\7")
    (root / "x" / ".hidden").mkdir()
    (root / "x" / ".hidden" / "z.png").write_bytes(b"junk")


def test_bad_files_are_skipped_with_one_warning(tmp_path):
    _bad_folder(tmp_path, good=60)
    with pytest.warns(UserWarning) as caught:
        it = ImageDataGenerator().flow_from_directory(
            str(tmp_path), target_size=(6, 6), batch_size=8, max_bad_fraction=0.1)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "empty.jpg: empty file (0 bytes)" in message
    assert "text.png: not a PNG, JPEG, GIF or BMP image" in message
    assert "truncated.jpg: truncated JPEG" in message
    assert "._0.png" not in message and "z.png" not in message
    assert it.samples == 60 and len(it.filenames) == 60
    assert [it[i][0].shape[0] for i in range(len(it))][-1] == 4


def test_a_jpeg_only_decoding_finds_is_skipped_without_a_cache(tmp_path):
    _bad_folder(tmp_path, good=20)
    name = write_corrupt_jpeg(tmp_path / "x" / "zeros.jpg")
    with pytest.warns(UserWarning, match=f"{name}: cannot be decoded"):
        it = ImageDataGenerator().flow_from_directory(
            str(tmp_path), target_size=(6, 6), batch_size=8, cache=False,
            max_bad_fraction=0.5)
    assert it.samples == 20
    assert sum(it[i][0].shape[0] for i in range(len(it))) == 20


def test_too_many_bad_files_raise(tmp_path):
    _bad_folder(tmp_path, good=20)
    with pytest.raises(DataError, match=r"3 of 23 image files are unreadable.*max_bad_fraction"):
        ImageDataGenerator().flow_from_directory(str(tmp_path), target_size=(6, 6))


def test_uncached_pipeline_equals_cached(image_dir):
    gen = ImageDataGenerator(shear_range=10, rescale=1 / 255)
    kwargs = dict(target_size=(10, 10), batch_size=4, seed=5)
    cached = gen.flow_from_directory(image_dir, cache=True, **kwargs)
    streamed = gen.flow_from_directory(image_dir, cache=False, **kwargs)
    np.testing.assert_allclose(cached[1][0], streamed[1][0], atol=1e-6)


def test_preprocessing_function_runs_on_each_image():
    x = np.ones((3, 4, 4, 3), np.float32)
    gen = ImageDataGenerator(preprocessing_function=lambda image: image * 2, rescale=0.5)
    np.testing.assert_array_equal(gen.flow(x, batch_size=3)[0], x)


def test_legacy_attributes_are_readable():
    gen = ImageDataGenerator(rotation_range=15, zoom_range=0.1)
    assert gen.rotation_range == 15 and gen.zoom_range == (0.9, 1.1)


def _fitted(x):
    gen = ImageDataGenerator(featurewise_center=True)
    gen.fit(x)
    return gen


@pytest.mark.parametrize("make, error, match", [
    (lambda d: ImageDataGenerator(zca_whitening=True), FmkerasError, "zca_whitening"),
    (lambda d: ImageDataGenerator(featurewise_center=True).flow_from_directory(d),
     FmkerasError, "call generator.fit"),
    (lambda d: ImageDataGenerator().flow_from_directory(d + "/nope"), DataError, "not found"),
    (lambda d: ImageDataGenerator().flow_from_directory(d, class_mode="multi"),
     FmkerasError, "class_mode"),
    (lambda d: ImageDataGenerator().flow_from_directory(d, subset="validation"),
     FmkerasError, "validation_split"),
    (lambda d: ImageDataGenerator().flow_from_directory(d, save_to_dir="out"),
     FmkerasError, "save_to_dir"),
    (lambda d: ImageDataGenerator().flow_from_directory(d, interpolation="cubic"),
     FmkerasError, "interpolation"),
    (lambda d: ImageDataGenerator(interpolation_order=3), FmkerasError, "interpolation_order"),
    (lambda d: ImageDataGenerator().flow(np.zeros((2, 4, 4))), DataError, "rank 4"),
    (lambda d: _fitted(np.ones((2, 4, 4, 3))).flow(np.zeros((2, 4, 4, 1))), FmkerasError,
     r"3 channel\(s\) fit\(\) saw for featurewise_center. Received: images with 1"),
    (lambda d: ImageDataGenerator().flow_from_dataframe([{"filename": "a.png"}], d),
     DataError, "Expected a pandas DataFrame .* Received: list"),
    (lambda d: ImageDataGenerator().random_transform(np.zeros((4, 4))), FmkerasError,
     r"one image of rank 3 \(channels_last\). Received: x.shape=\(4, 4\)"),
    (lambda d: ImageDataGenerator().apply_transform(np.zeros((4, 4, 1)), {"angle": 3}),
     FmkerasError, r"Unknown transform parameters \['angle'\]"),
    (lambda d: ImageDataGenerator(featurewise_center=True, rotation_range=5).fit(
        np.ones((2, 4, 4, 1)), augment=True, rounds=0), FmkerasError, "Received: rounds=0"),
    (lambda d: ImageDataGenerator(featurewise_center=True).fit(np.full((2, 4, 4, 1), np.nan)),
     FmkerasError, "finite pixels. Received: 32 NaN"),
    (lambda d: next(iter(ImageDataGenerator(preprocessing_function=lambda x: x[:2]).flow(
        np.ones((2, 4, 4, 1)), batch_size=2))), Exception,
     r"the shape it was given, \(4, 4, 1\). Received: an array of shape \(2, 4, 1\)"),
])
def test_bad_input_raises_clear_errors(image_dir, make, error, match):
    with pytest.raises(error, match=match) as info:
        make(image_dir)
    assert "Received" in str(info.value) or "Expected" in str(info.value)


def test_empty_class_folder_raises(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _save(tmp_path / "a" / "1.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError, match=r"without images.*\['b'\]"):
        ImageDataGenerator().flow_from_directory(str(tmp_path))


def test_fit_epochs_survive_early_prefetch(image_dir):
    """model.fit may ask for the next epoch's first batches before on_epoch_end."""
    gen = ImageDataGenerator(zoom_range=0.3)
    it = gen.flow_from_directory(image_dir, target_size=(8, 8), batch_size=4, seed=9)
    reference = gen.flow_from_directory(image_dir, target_size=(8, 8), batch_size=4, seed=9)
    epoch0 = [reference[i][0] for i in range(4)]
    reference.on_epoch_end()
    epoch1 = [reference[i][0] for i in range(4)]
    it.on_epoch_begin()
    for i in (2, 0, 3, 1):  # fit shuffles the batch order
        np.testing.assert_array_equal(it[i][0], epoch0[i])
    early = it[0][0]  # prefetched for the next epoch
    it.on_epoch_end()
    it.on_epoch_begin()
    np.testing.assert_array_equal(early, epoch1[0])
    for i in (1, 2, 3):
        np.testing.assert_array_equal(it[i][0], epoch1[i])
    it.on_epoch_end()


def test_std_normalization_turns_on_centering_with_a_warning():
    with pytest.warns(UserWarning, match="also turns on featurewise_center"):
        gen = ImageDataGenerator(featurewise_std_normalization=True)
    assert gen.featurewise_center


def test_dataframe_binary_needs_two_classes(image_dir):
    table = {"filename": ["a.png", "b.png", "c.png"], "class": ["x", "y", "z"]}
    with pytest.raises(DataError, match="exactly 2 classes"):
        ImageDataGenerator().flow_from_dataframe(table, image_dir, class_mode="binary")


@pytest.mark.parametrize("params", [
    dict(theta=12.0, tx=1.5, ty=-2.0, shear=4.0, zx=0.9, zy=1.1, flip_horizontal=True),
    dict(flip_vertical=True, channel_shift_intensity=30.0),
    dict(brightness=None, channel_shift_intensity=None, zx=1.2),
])
def test_apply_transform_matches_legacy(params):
    image = np.random.default_rng(2).uniform(0, 255, (11, 11, 3)).astype("float32")
    kwargs = dict(fill_mode="nearest", channel_shift_range=40.0)
    expected = LegacyGenerator(**kwargs).apply_transform(image, params)
    got = ImageDataGenerator(**kwargs).apply_transform(image, params)
    assert got.shape == image.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_random_transform_is_seeded_and_drawn_from_the_ranges():
    kwargs = dict(rotation_range=20, width_shift_range=0.25, zoom_range=0.1,
                  horizontal_flip=True, channel_shift_range=10.0, brightness_range=(0.8, 1.2))
    gen = ImageDataGenerator(**kwargs)
    draws = [gen.get_random_transform((8, 8, 3), seed=s) for s in range(200)]
    assert set(draws[0]) == set(LegacyGenerator(**kwargs).get_random_transform((8, 8, 3)))
    assert draws[0] == gen.get_random_transform((8, 8, 3), seed=0) != draws[1]
    assert all(-20 <= d["theta"] <= 20 and -2 <= d["tx"] <= 2 and d["ty"] == 0
               and 0.9 <= d["zx"] <= 1.1 and 0.8 <= d["brightness"] <= 1.2 for d in draws)
    assert 0.3 < np.mean([d["flip_horizontal"] for d in draws]) < 0.7
    assert np.std([d["theta"] for d in draws]) == pytest.approx(20 / math.sqrt(3), rel=0.2)
    image = np.random.default_rng(3).uniform(0, 255, (8, 8, 3)).astype("float32")
    np.testing.assert_array_equal(gen.random_transform(image, seed=5),
                                  gen.apply_transform(image, gen.get_random_transform(
                                      image.shape, seed=5)))
    first = ImageDataGenerator(**kwargs, data_format="channels_first")
    assert first.random_transform(image.transpose(2, 0, 1), seed=5).shape == (3, 8, 8)

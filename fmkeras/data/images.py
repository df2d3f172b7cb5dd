"""Image folders as tf.data pipelines.

A class-per-folder layout (``root/<class>/<image>``) is indexed once in
Python (sorted, junk ignored, every problem named) and then decoded in
parallel by tf.data. The index is shared by every image pipeline in fmkeras.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import warnings

import keras
import numpy as np
import tensorflow as tf

from fmkeras._scalars import accepts_numpy_scalars
from fmkeras.config import is_count
from fmkeras.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
# Image formats legacy Keras (through Pillow) or cameras produce that TensorFlow
# cannot decode: skipped with a warning instead of silently.
UNREADABLE_EXTENSIONS = (".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".heic", ".heif")
COLOR_MODES = {"grayscale": 1, "rgb": 3, "rgba": 4}
# Files that operating systems and editors drop into folders; never images.
_JUNK_NAMES = {"thumbs.db", "desktop.ini", ".ds_store"}


@dataclasses.dataclass(frozen=True)
class DirectoryIndex:
    """The images found under a class-per-folder directory.

    Attributes:
        directory: str. The root that was indexed.
        filenames: list of str. Paths relative to ``directory``, in class
            then file-name order.
        labels: np.ndarray of int32. Class index of each file.
        class_names: list of str. Sorted class folder names; the position is
            the class index.

    Example:

    >>> index = DirectoryIndex("data/digits/train", ["0/0000.png"], np.zeros(1, np.int32), ["0"])
    >>> index.paths, len(index)
    (['data/digits/train/0/0000.png'], 1)
    """

    directory: str
    filenames: list
    labels: np.ndarray
    class_names: list

    @property
    def paths(self):
        """Absolute paths of the files, in index order."""
        return [os.path.join(self.directory, f) for f in self.filenames]

    def __len__(self):
        return len(self.filenames)


def _is_junk(name):
    return name.startswith(".") or name.lower() in _JUNK_NAMES


def _list_images(folder, follow_links, extensions, unreadable=None):
    """Image paths under ``folder``, sorted; other image formats go to ``unreadable``."""
    found = []
    seen_dirs = set()
    for root, dirs, files in os.walk(folder, followlinks=follow_links):
        # Guard against symlink loops: never enter the same real folder twice.
        real = os.path.realpath(root)
        if real in seen_dirs:
            dirs[:] = []
            continue
        seen_dirs.add(real)
        dirs[:] = sorted(d for d in dirs if not _is_junk(d))
        for name in sorted(files):
            if _is_junk(name):
                continue
            if name.lower().endswith(extensions):
                found.append(os.path.join(root, name))
            elif unreadable is not None and name.lower().endswith(UNREADABLE_EXTENSIONS):
                unreadable.append(os.path.join(root, name))
    return found


def index_directory(directory, classes=None, follow_links=False,
                    extensions=IMAGE_EXTENSIONS, allow_empty_classes=False):
    """Index a ``root/<class>/<image>`` folder.

    Hidden files and folders, ``Thumbs.db``, ``desktop.ini`` and AppleDouble
    ``._x.jpg`` files are ignored. Class and file names may be any unicode.

    Args:
        directory: str or path. The root folder holding one folder per class.
        classes: optional list of str. Class folders to use, in this order;
            defaults to every sub-folder, sorted.
        follow_links: bool. Whether to follow symbolic links to folders.
        extensions: tuple of str. Lower-case file endings to accept.
        allow_empty_classes: bool. If False, a class folder without images
            raises :class:`DataError`.

    Returns:
        A :class:`DirectoryIndex`.

    Example:

    >>> index = index_directory("data/digits/train")
    >>> index.class_names[:3], len(index) > 1000
    (['0', '1', '2'], True)
    """
    directory = os.fspath(directory)
    if not os.path.exists(directory):
        raise DataError(
            f"Image directory not found. Expected a folder of class folders. "
            f"Received: {directory!r}")
    if not os.path.isdir(directory):
        raise DataError(
            f"Expected a folder of class folders, not a file. Received: {directory!r}")
    if classes is None:
        classes = sorted(
            d for d in os.listdir(directory)
            if not _is_junk(d) and os.path.isdir(os.path.join(directory, d)))
    else:
        classes = list(classes)
        missing = [c for c in classes if not os.path.isdir(os.path.join(directory, c))]
        if missing:
            raise DataError(
                f"Class folders {missing} not found in {directory!r}. "
                f"Received classes={classes}")
    if not classes:
        raise DataError(
            f"No class folders in {directory!r}. Expected one sub-folder per class, "
            f"each holding images ({', '.join(extensions)}).")
    filenames, labels, empty, unreadable = [], [], [], []
    for label, name in enumerate(classes):
        files = _list_images(os.path.join(directory, name), follow_links, extensions,
                             unreadable)
        if not files:
            empty.append(name)
        filenames.extend(os.path.relpath(f, directory) for f in files)
        labels.extend([label] * len(files))
    other = ""
    if unreadable:
        kinds = sorted({os.path.splitext(f)[1].lower() for f in unreadable})
        other = (f" {len(unreadable)} {'/'.join(kinds)} file(s) were skipped: TensorFlow "
                 f"cannot decode them; convert them to PNG (e.g. with Pillow), e.g. "
                 f"{os.path.relpath(unreadable[0], directory)}.")
    if empty and not allow_empty_classes:
        raise DataError(
            f"Class folders without images in {directory!r}: {empty}. "
            f"Expected at least one image ({', '.join(extensions)}) in each class folder."
            + other)
    if not filenames:
        raise DataError(f"No images found in {directory!r}." + other)
    if other:
        warnings.warn(other.strip(), stacklevel=2)
    return DirectoryIndex(
        directory=directory,
        filenames=filenames,
        labels=np.asarray(labels, dtype=np.int32),
        class_names=classes,
    )


def decode_image(data, channels, image_size=None, dtype=tf.float32):
    """Decode encoded image bytes into a float tensor of shape ``(h, w, channels)``.

    PNG, JPEG, BMP and GIF (first frame) are accepted; grey, RGBA, palette and
    16-bit images are converted to ``channels``. Values stay in ``[0, 255]``.

    Args:
        data: scalar ``tf.string`` tensor of encoded bytes.
        channels: int. 1, 3 or 4.
        image_size: optional ``(height, width)``. Bilinear resize target.
        dtype: the output float dtype.

    Example:

    >>> raw = tf.io.encode_png(tf.zeros((4, 4, 1), tf.uint8))
    >>> decode_image(raw, channels=3, image_size=(8, 8)).shape
    TensorShape([8, 8, 3])
    """
    image = tf.io.decode_image(data, channels=0, expand_animations=False, dtype=tf.uint16)
    # Scale 16-bit values down to the 8-bit range every pipeline expects.
    image = tf.cast(image, tf.float32) / 257.0
    image = _to_channels(image, channels)
    if image_size is not None:
        image = tf.image.resize(image, image_size, method="bilinear", antialias=False)
    return tf.cast(image, dtype)


def _to_channels(image, channels):
    have = tf.shape(image)[-1]

    def from_grey():
        grey = image[..., :1]
        if channels == 1:
            return grey
        rgb = tf.concat([grey, grey, grey], axis=-1)
        if channels == 3:
            return rgb
        # Grey + alpha PNGs keep their alpha; plain grey is opaque.
        alpha = tf.cond(have == 2, lambda: image[..., 1:2],
                        lambda: tf.fill(tf.shape(grey), 255.0))
        return tf.concat([rgb, alpha], -1)

    def from_colour():
        rgb = image[..., :3]
        if channels == 1:
            return tf.reduce_sum(rgb * tf.constant([0.2989, 0.5870, 0.1140]), -1, keepdims=True)
        if channels == 3:
            return rgb
        alpha = tf.cond(have == 4, lambda: image[..., 3:4],
                        lambda: tf.fill(tf.shape(image[..., :1]), 255.0))
        return tf.concat([rgb, alpha], -1)

    out = tf.cond(have <= 2, from_grey, from_colour)
    return tf.ensure_shape(out, [None, None, channels])


def check_color_mode(color_mode):
    """Return the channel count of ``color_mode`` or raise a clear error.

    Example:

    >>> check_color_mode("grayscale"), check_color_mode("rgb")
    (1, 3)
    """
    if color_mode not in COLOR_MODES:
        raise DataError(
            f"Unknown color_mode. Expected one of {sorted(COLOR_MODES)}. "
            f"Received: color_mode={color_mode!r}")
    return COLOR_MODES[color_mode]


def check_image_size(image_size):
    """``image_size`` (an int or ``(height, width)``) as a pair of positive ints, or a clear error.

    Example:

    >>> check_image_size(16)
    (16, 16)
    """
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(is_count(s, 1) for s in size)):
        raise DataError(f"Expected image_size to be a positive int or (height, width) of "
                        f"positive ints. Received: image_size={image_size!r}")
    return tuple(size)


def load_image(path, channels=3):
    """Read and decode one image file (graph-compatible), values in ``[0, 255]``.

    Example:

    >>> load_image(tf.constant("data/digits/train/0/0000.png"), channels=1).shape
    TensorShape([8, 8, 1])
    """
    return decode_image(tf.io.read_file(path), channels)


def validate_index(index, max_bad_fraction=0.05, decode=True, skipped=None):
    """Drop files that are not usable images, with one warning naming each and why.

    A header check (magic bytes, zero-byte files) runs on every file, then a
    parallel decode finds truncated or corrupt images. Above
    ``max_bad_fraction`` it raises :class:`DataError` with the same list.

    Args:
        index: a :class:`DirectoryIndex`.
        max_bad_fraction: float. Largest tolerated fraction of bad files.
        decode: bool. Also decode every file (catches truncated images).
        skipped: optional list. The paths of the files left out are appended
            to it (for a run's report).

    Returns:
        A :class:`DirectoryIndex` of the usable files.

    Example:

    >>> left_out = []
    >>> len(validate_index(index_directory("data/digits/test"), skipped=left_out)), left_out
    (360, [])
    """
    from fmkeras.data.image_files import read_images

    good, _ = read_images(index.paths, load_image, cache=False, validate=decode,
                          max_bad_fraction=max_bad_fraction)
    if len(good) == len(index):
        return index
    if skipped is not None:
        usable = set(good.tolist())
        skipped.extend(path for i, path in enumerate(index.paths) if i not in usable)
    return dataclasses.replace(index, filenames=[index.filenames[i] for i in good],
                               labels=index.labels[good])


def _check_split(validation_split, name="validation_split"):
    if (isinstance(validation_split, bool) or not isinstance(validation_split, (int, float))
            or not 0 <= validation_split < 1):
        raise DataError(f"Expected {name} in [0, 1). Received: {name}={validation_split!r}")


def split_index(index, validation_split, seed, name="validation_split"):
    """Split a :class:`DirectoryIndex` into (train, validation) by a fixed seed.

    The split is stratified: each class gives the same fraction (at least one
    image when it has two or more), so small classes are never missing from
    validation.

    Args:
        index: a :class:`DirectoryIndex`.
        validation_split: float in ``[0, 1)``. Fraction for validation.
        seed: int. Seed of the permutation.
        name: str. The setting ``validation_split`` came from, for error
            messages (``"data.test_split"`` when the split is the test set).

    Returns:
        ``(train_index, validation_index)``; the second is ``None`` when
        ``validation_split`` is 0.

    Example:

    >>> train, val = split_index(index_directory("data/digits/train"), 0.1, seed=0)
    >>> len(val) > 100
    True
    """
    _check_split(validation_split, name)
    if not validation_split:
        return index, None
    rng = np.random.default_rng(seed)
    val_rows = []
    for label in range(len(index.class_names)):
        rows = np.flatnonzero(index.labels == label)
        count = int(round(len(rows) * validation_split))
        if len(rows) >= 2:
            count = min(max(count, 1), len(rows) - 1)
        val_rows.extend(rng.permutation(rows)[:count].tolist())
    if not val_rows:
        counts = np.bincount(index.labels, minlength=len(index.class_names)).tolist()
        part = "test" if "test" in name else "validation"
        raise DataError(f"{name}={validation_split} leaves no image for {part} "
                        f"(images per class: {counts}). Expected a class with at least 2 "
                        f"images, or a larger split")
    val_mask = np.zeros(len(index), bool)
    val_mask[val_rows] = True

    def take(mask):
        rows = np.flatnonzero(mask)
        return dataclasses.replace(
            index, filenames=[index.filenames[i] for i in rows], labels=index.labels[rows])
    return take(~val_mask), take(val_mask)


@accepts_numpy_scalars
def image_dataset(source, image_size, batch_size=32, color_mode="rgb", shuffle=False,
                  seed=0, cache=True, rescale=1.0 / 255, num_classes=None,
                  label_mode="int", augment=None, validate=True, max_bad_fraction=0.05,
                  validation_split=None, subset=None, epoch_counter=None, repeat=False):
    """A batched ``tf.data.Dataset`` of ``(images, labels)`` from a folder, an index or tfds.

    Files are decoded in parallel, resized, optionally cached in memory (after
    resizing, before any random augmentation) and prefetched. When
    ``shuffle`` is true each epoch has a fresh order drawn from ``seed``.

    Args:
        source: str (a ``root/<class>/<image>`` folder, or ``tfds:<name>`` for
            the ``train`` split of a TensorFlow Datasets set) or a
            :class:`DirectoryIndex`.
        image_size: int or ``(height, width)``.
        batch_size: int.
        color_mode: str. ``grayscale``, ``rgb`` or ``rgba``.
        shuffle: bool. Shuffle each epoch.
        seed: int, or None for a random one (as in Keras). Seed of the
            shuffle and of the validation split; ``validation_split`` with
            ``subset="training"`` or ``"validation"`` needs an int, so both
            calls split alike.
        cache: bool. Keep decoded images in memory after the first epoch.
        rescale: float. Factor applied to the ``[0, 255]`` pixels (None: 1).
        num_classes: optional int. Needed for ``label_mode="categorical"``;
            defaults to the number of classes in the index.
        label_mode: str. ``int`` (class indices) or ``categorical``
            (one-hot float vectors).
        augment: optional :class:`fmkeras.data.Augmentation` or callable
            ``(images, labels) -> (images, labels)`` applied per batch, on
            ``[0, 255]`` pixels, after caching.
        validate: bool. Check every file first (:func:`validate_index`):
            unusable files are skipped with one warning instead of failing
            mid-epoch.
        max_bad_fraction: float. Above this fraction of bad files, raise.
        validation_split: optional float. Fraction held out (stratified,
            by ``seed``) for validation.
        subset: ``"training"``, ``"validation"`` or ``"both"`` (a pair of
            datasets, the validation one neither shuffled nor augmented);
            required with ``validation_split``.
        epoch_counter: optional :class:`EpochCounter`. With ``shuffle`` or
            ``augment``, each pass's order and transforms are a pure function
            of ``(seed, epoch, batch)``; pass ``epoch_counter.callback()`` to
            ``model.fit`` so a resumed run repeats the same epochs exactly.
        repeat: bool. Repeat the epochs without end, so ``fit`` keeps one
            iterator and the next epoch's first batches are prepared while
            the current epoch ends; pass ``steps_per_epoch=ceil(images /
            batch_size)`` to ``fit``, and a ``steps_per_execution`` that divides
            it (Keras runs whole groups of steps). The epochs stay the same
            as without it.

    Returns:
        ``tf.data.Dataset`` (a pair for ``subset="both"``).

    Example:

    >>> ds = image_dataset("data/digits/test", 16, batch_size=8, color_mode="grayscale")
    >>> images, labels = next(iter(ds))
    >>> images.shape
    TensorShape([8, 16, 16, 1])
    """
    image_size = check_image_size(image_size)
    if not is_count(batch_size, 1):
        raise DataError(f"Expected a positive batch_size. Received: batch_size={batch_size!r}")
    if seed is None and validation_split and subset in ("training", "validation"):
        raise DataError(f"validation_split with subset={subset!r} needs a seed, so that the "
                        f"training and validation calls split the files the same way (as "
                        f"in Keras), or subset='both'. Received: seed=None")
    if seed is None:  # as in Keras: a random order, drawn once
        seed = int(np.random.default_rng().integers(2**31 - 1))
    elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise DataError(f"Expected an integer seed, or None. Received: seed={seed!r}")
    if validation_split is not None:
        _check_split(validation_split)
    if rescale is None:  # as ImageDataGenerator(rescale=None): pixels kept in [0, 255]
        rescale = 1.0
    elif isinstance(rescale, bool) or not isinstance(rescale, numbers.Real):
        raise DataError(f"Expected rescale to be a number such as 1/255, or None. "
                        f"Received: rescale={rescale!r}")
    from fmkeras.data.augment import Augmentation

    if augment is not None and not isinstance(augment, Augmentation) and not callable(augment):
        raise DataError(f"Expected augment to be an fmkeras.data.Augmentation, a callable "
                        f"(images, labels) -> (images, labels), or None. "
                        f"Received: augment={augment!r}")
    settings = dict(image_size=image_size, batch_size=batch_size, color_mode=color_mode,
                    seed=seed, cache=cache, rescale=rescale, label_mode=label_mode)
    if validation_split:
        if subset not in ("training", "validation", "both"):
            raise DataError(f"validation_split needs subset='training', 'validation' or "
                            f"'both'. Received: subset={subset!r}")
    elif subset is not None:
        raise DataError(f"subset={subset!r} needs a validation_split above 0. "
                        f"Received: validation_split={validation_split!r}")
    from fmkeras.data import tfds_images

    if tfds_images.is_tfds_name(source):
        if not validation_split:
            return _repeated(tfds_images.tfds_image_dataset(
                source, shuffle=shuffle, augment=augment, **settings)[0], repeat)
        keep = int(round(100 * (1 - validation_split)))
        train = _repeated(tfds_images.tfds_image_dataset(
            source, split=f"train[:{keep}%]", shuffle=shuffle, augment=augment, **settings)[0],
            repeat)
        val = tfds_images.tfds_image_dataset(source, split=f"train[{keep}%:]", **settings)[0]
        return {"training": train, "validation": val, "both": (train, val)}[subset]
    index = source if isinstance(source, DirectoryIndex) else index_directory(source)
    if num_classes is not None and (not is_count(num_classes, 1)
                                    or num_classes < len(index.class_names)):
        raise DataError(f"Expected num_classes >= the {len(index.class_names)} classes found "
                        f"({index.class_names}), or None. Received: num_classes={num_classes!r}")
    if validate:
        index = validate_index(index, max_bad_fraction)
    if validation_split:
        train_index, val_index = split_index(index, validation_split, seed)
        common = dict(settings, num_classes=num_classes or len(index.class_names),
                      validate=False)
        train = (image_dataset(train_index, shuffle=shuffle, augment=augment,
                               epoch_counter=epoch_counter, repeat=repeat, **common)
                 if subset != "validation" else None)
        val = image_dataset(val_index, **common) if subset != "training" else None
        return {"training": train, "validation": val, "both": (train, val)}[subset]
    channels = check_color_mode(color_mode)
    if label_mode not in ("int", "categorical"):
        raise DataError(f"Expected label_mode 'int' or 'categorical'. Received: {label_mode!r}")
    num_classes = num_classes or len(index.class_names)
    if shuffle or augment is not None:
        return _epoch_pipeline(index, image_size, channels, batch_size, shuffle, seed, cache,
                               num_classes, label_mode, augment, rescale, epoch_counter,
                               repeat)
    ds = tf.data.Dataset.from_tensor_slices((index.paths, index.labels))

    def load(path, label):
        return decode_image(tf.io.read_file(path), channels, image_size), label

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _repeated(batch_pipeline(ds, batch_size, cache=cache, num_classes=num_classes,
                                    label_mode=label_mode, rescale=rescale), repeat)


def _repeated(ds, repeat):
    """``ds`` repeated without end (prefetch kept last), or ``ds`` itself."""
    return ds.repeat().prefetch(tf.data.AUTOTUNE) if repeat else ds


class EpochCounter:
    """The epoch a training pipeline is in, so its order and augmentation follow the epoch.

    A pipeline made with a counter reads it (and adds one) each time a pass
    over it starts; :meth:`callback` sets it to Keras' epoch number at the
    start of every epoch, so a run resumed at epoch ``k`` gets epoch ``k``'s
    order and transforms, exactly as an uninterrupted run would.

    Args:
        start: int. The epoch of the first pass.

    Example:

    >>> counter = EpochCounter()
    >>> ds = image_dataset("data/digits/test", 8, batch_size=360, color_mode="grayscale",
    ...                    shuffle=True, epoch_counter=counter)
    >>> callbacks = [counter.callback()]  # pass to model.fit
    """

    def __init__(self, start=0):
        self.variable = tf.Variable(int(start), dtype=tf.int64, trainable=False,
                                    name="epoch_counter")
        # Set by a repeated pipeline: its passes run ahead of Keras' epochs
        # (prefetch), so the callback sets the counter only when fit starts.
        self.repeating = False

    def set(self, epoch):
        """Make ``epoch`` the epoch of the next pass."""
        self.variable.assign(int(epoch))

    def callback(self):
        """A Keras callback that sets the counter at the start of each epoch."""
        return _EpochCallback(self)


class _EpochCallback(keras.callbacks.Callback):
    def __init__(self, counter):
        super().__init__()
        self.counter = counter
        self._started = False

    def on_train_begin(self, logs=None):
        self._started = False

    def on_epoch_begin(self, epoch, logs=None):
        # A repeated pipeline counts its passes itself once started: by the time
        # Keras begins epoch k, prefetching may already have begun pass k + 1.
        if not (self.counter.repeating and self._started):
            self.counter.set(epoch)
        self._started = True


# Decoded images are kept in memory (float32) up to this size; beyond it they are
# decoded again each epoch.
CACHE_BYTES = 2 << 30


def _epoch_pipeline(index, image_size, channels, batch_size, shuffle, seed, cache,
                    num_classes, label_mode, augment, rescale, counter, repeat=False):
    """Batches whose order and augmentation are a pure function of (seed, epoch, batch)."""
    from fmkeras.data.image_files import decode_all

    counter = counter or EpochCounter()
    paths, labels = index.paths, index.labels

    def load(path):
        return decode_image(tf.io.read_file(path), channels, image_size)

    pixels = None
    if cache and len(paths) * int(np.prod(image_size)) * channels * 4 <= CACHE_BYTES:
        good, decoded = decode_all(paths, load, keep=True)
        if len(good) != len(paths):
            raise DataError(f"{len(paths) - len(good)} images in {index.directory!r} cannot "
                            "be decoded; check them with fmkeras.data.images.validate_index.")
        # A variable, not a constant: tf.data captures it by reference, not in the graph.
        pixels = tf.Variable(decoded, trainable=False, name="decoded_images")
    paths_t, labels_t = tf.constant(paths), tf.constant(labels)
    count = len(paths)

    def epoch_elements(_):
        epoch = counter.variable.assign_add(1) - 1
        order = tf.range(count, dtype=tf.int64)
        if shuffle:
            order = tf.random.experimental.stateless_shuffle(
                order, seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
        # No function inside flat_map: each pass would instantiate it again (~20 ms).
        return tf.data.Dataset.from_tensor_slices((order, tf.fill([count], epoch)))

    ds = tf.data.Dataset.range(1).flat_map(epoch_elements)
    if pixels is not None:
        ds = ds.batch(batch_size)

        def gather(i, e):
            return tf.gather(pixels, i), tf.gather(labels_t, i), e[0]
    else:
        ds = ds.map(lambda i, e: (load(tf.gather(paths_t, i)), tf.gather(labels_t, i), e),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(batch_size)

        def gather(x, y, e):
            return x, y, e[0]
    ds = ds.enumerate()

    def finish(batch, element):  # one map per batch: every stage costs at each epoch start
        images, ids, epoch = gather(*element)
        if augment is not None and not callable(augment):
            from fmkeras.data.augment import augment_images

            pair = tf.stack([tf.constant(seed, tf.int64), epoch * (1 << 24) + batch])
            images = augment_images(images, augment, pair)
        targets = tf.one_hot(ids, num_classes) if label_mode == "categorical" else ids
        if callable(augment):
            images, targets = augment(images, targets)
        return images * rescale, targets

    ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE)
    # flat_map hides the length; Keras needs it to know where an epoch ends.
    batches = -(-count // batch_size)
    ds = ds.apply(tf.data.experimental.assert_cardinality(batches))
    if not repeat:
        return ds.prefetch(tf.data.AUTOTUNE)
    # Each pass still reads the counter and restarts the batch numbers; the
    # prefetch now runs on into the next pass instead of stopping.
    counter.repeating = True
    return _repeated(ds, repeat)


def batch_pipeline(ds, batch_size, cache=True, shuffle_buffer=0, seed=0, num_classes=None,
                   label_mode="int", augment=None, rescale=1.0):
    """Cache, shuffle, batch, one-hot, augment, rescale and prefetch ``(image, label)`` pairs.

    The order matters: caching comes before shuffling and augmentation so
    every epoch gets a fresh order and fresh random transforms; augmentation
    sees ``[0, 255]`` pixels and rescaling comes last.

    Args:
        ds: ``tf.data.Dataset`` of decoded ``(image, label)`` pairs.
        batch_size: int.
        cache: bool. Cache in memory.
        shuffle_buffer: int. Shuffle buffer size (0: no shuffling).
        seed: int. Shuffle seed.
        num_classes: int. Needed for ``label_mode="categorical"``.
        label_mode: str. ``int`` or ``categorical``.
        augment: optional :class:`fmkeras.data.Augmentation` (drawn from
            stateless seeds that depend on ``seed``, the epoch and the batch),
            or a callable ``(images, labels) -> (images, labels)``.
        rescale: float. Factor applied to the pixels after augmentation.

    Example:

    >>> ds = tf.data.Dataset.from_tensor_slices((tf.zeros((4, 2, 2, 1)), [0, 1, 0, 1]))
    >>> next(iter(batch_pipeline(ds, 2, num_classes=2, label_mode="categorical")))[1].shape
    TensorShape([2, 2])
    """
    if not is_count(batch_size, 1):
        raise DataError(f"Expected a positive batch_size. Received: batch_size={batch_size!r}")
    if cache:
        ds = ds.cache()
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if label_mode == "categorical":
        ds = ds.map(lambda x, y: (x, tf.one_hot(y, num_classes)),
                    num_parallel_calls=tf.data.AUTOTUNE)
    if augment is not None and not callable(augment):
        from fmkeras.data.augment import augment_images

        aug = augment
        # One stateless seed per batch: a pure function of (seed, epoch, batch).
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip(ds, seeds).map(
            lambda batch, pair: (augment_images(batch[0], aug, pair), *batch[1:]),
            num_parallel_calls=tf.data.AUTOTUNE)
    elif augment is not None:
        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    if rescale != 1.0:
        ds = ds.map(lambda x, *rest: (x * rescale, *rest), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)

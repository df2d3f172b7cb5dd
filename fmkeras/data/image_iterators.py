"""Iterators of the ImageDataGenerator-compatible API and the image-file loading they share.

:class:`ImageIterator` is a ``keras.utils.PyDataset`` (so ``model.fit`` takes
it directly) with random access, endless iteration and ``as_dataset()``.
:class:`DirectoryIterator`, :class:`DataFrameIterator` and
:class:`NumpyArrayIterator` are the three sources of
:class:`fmkeras.data.ImageDataGenerator`.
"""

from __future__ import annotations

import math
import os
import threading

import keras
import numpy as np
import tensorflow as tf

from fmkeras.data.augment import augment_images
from fmkeras.data.image_files import read_images, scan_images
from fmkeras.data.images import check_color_mode, decode_image, index_directory
from fmkeras.errors import DataError, FmkerasError

# ------------------------------------------------------------------ image files
# tf.image.resize method and antialias for each legacy (PIL) interpolation name.
_RESIZE = {"nearest": ("nearest", False), "bilinear": ("bilinear", True),
           "bicubic": ("bicubic", True), "lanczos": ("lanczos3", True),
           "box": ("area", False), "area": ("area", False)}
_AUTO_CACHE_BYTES = 2 << 30


def _image_loader(target_size, channels, interpolation):
    """A graph function: file path -> resized ``uint8`` image ``(h, w, channels)``."""
    if interpolation not in _RESIZE:
        raise FmkerasError(
            f"Expected interpolation in {sorted(_RESIZE)}. "
            f"Received: interpolation={interpolation!r}")
    method, antialias = _RESIZE[interpolation]
    size = tf.constant(target_size, tf.int32)

    def load(path):
        image = decode_image(tf.io.read_file(path), channels)
        same = tf.reduce_all(tf.shape(image)[:2] == size)
        image = tf.cond(same, lambda: image, lambda: tf.image.resize(
            image, size, method=method, antialias=antialias))
        image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
        return tf.ensure_shape(image, list(target_size) + [channels])

    return load


def _split(subset, validation_split, n):
    """Legacy split of ``n`` items: validation first, training after."""
    if subset is None:
        return 0, n
    if subset not in ("training", "validation"):
        raise FmkerasError(
            f"Expected subset 'training', 'validation' or None. Received: subset={subset!r}")
    if not validation_split:
        raise FmkerasError(
            f"subset={subset!r} needs ImageDataGenerator(validation_split=...) above 0. "
            f"Received: validation_split={validation_split!r}")
    cut = int(validation_split * n)
    return (0, cut) if subset == "validation" else (cut, n)


# ------------------------------------------------------------------- iterators
class ImageIterator(keras.utils.PyDataset):
    """Batches of augmented images; a ``PyDataset``, an endless iterator and a tf.data source.

    Built by the ``ImageDataGenerator.flow*`` methods. ``iterator[i]`` is batch
    ``i`` of the current epoch (``on_epoch_end()`` moves to the next one, which
    ``model.fit`` calls); ``next(iterator)`` walks epoch after epoch forever,
    like the legacy iterator; :meth:`as_dataset` gives a ``tf.data.Dataset``.
    Batches are numpy arrays ``x``, ``(x, y)`` or ``(x, y, sample_weight)``.

    Attributes:
        n: int. Number of images (also ``samples``).
        batch_size: int. Images per batch.
        image_shape: tuple. Shape of one image, in the generator's data format.
        epoch: int. The epoch ``iterator[i]`` serves.

    Example:

    >>> from fmkeras.data import ImageDataGenerator
    >>> it = ImageDataGenerator(zoom_range=0.1).flow(np.zeros((8, 4, 4, 1)), batch_size=4)
    >>> ds = it.as_dataset()          # one epoch per pass, a new augmentation each pass
    >>> [tuple(x.shape) for x in ds]
    [(4, 4, 4, 1), (4, 4, 4, 1)]
    """

    def __init__(self, generator, *, images, paths=None, load=None, targets=None,
                 sample_weight=None, class_mode=None, batch_size=32, shuffle=True, seed=None):
        super().__init__()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise FmkerasError(f"Expected a positive int batch_size. Received: {batch_size!r}")
        self.image_data_generator = generator
        self.n = self.samples = int(len(images) if images is not None else len(paths))
        if self.n == 0:
            raise DataError("No images left to iterate over. Expected at least one image.")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.class_mode = class_mode
        self.dtype = generator.dtype
        self.data_format = generator.data_format
        self._seed = int(np.random.randint(2**31 - 1) if seed is None else seed)
        self._images = None if images is None else tf.constant(images)
        self._paths = None if paths is None else tf.constant(paths)
        self._load = load
        self._targets = None if targets is None else tf.constant(targets)
        kind = getattr(targets, "dtype", np.dtype(float)).kind
        self._label_dtype = targets.dtype if kind in "OUS" else None
        self._weights = None if sample_weight is None else tf.constant(sample_weight)
        self._epoch = 0
        # Epochs of model.fit, counted between on_epoch_begin and on_epoch_end.
        self._fit_epoch = 0
        self._in_fit_epoch = False
        self._served = set()
        self._lock = threading.Lock()
        self._perms = {}
        self._stream = None
        self._batch = tf.function(self._make_batch, input_signature=[
            tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.int64),
            tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.float32),
            tf.TensorSpec([None], tf.float32)])

    @property
    def epoch(self):
        """The epoch ``iterator[i]`` serves outside ``model.fit``."""
        return self._epoch

    def __len__(self):
        return math.ceil(self.n / self.batch_size)

    def on_epoch_begin(self):
        """Called by ``model.fit`` before each epoch."""
        with self._lock:
            self._in_fit_epoch = True
            self._served = set()

    def on_epoch_end(self):
        """Move to the next epoch (new order and augmentation).

        ``model.fit`` calls ``on_epoch_begin`` and ``on_epoch_end`` around each
        epoch; it may prefetch the first batches of the next epoch before
        ``on_epoch_end``, so inside an epoch a batch index asked for a second
        time is served from the next epoch. Outside ``fit``, this simply
        advances :attr:`epoch`.
        """
        with self._lock:
            if self._in_fit_epoch:
                self._in_fit_epoch = False
                self._fit_epoch += 1
            else:
                self._epoch += 1

    def _epoch_for(self, index):
        with self._lock:
            if not self._in_fit_epoch:
                return self._epoch
            early = index in self._served
            self._served.add(index)
            return self._fit_epoch + int(early)

    def reset(self):
        """Restart ``next(iterator)`` from the first batch of epoch 0."""
        self._stream = None

    def _stats(self):
        gen = self.image_data_generator
        gen._check_fitted()
        mean = np.zeros([1]) if gen.mean is None else np.ravel(gen.mean)
        std = np.ones([1]) if gen.std is None else np.ravel(gen.std)
        return tf.constant(mean, tf.float32), tf.constant(std, tf.float32)

    def _permutation(self, epoch):
        if not self.shuffle:
            return tf.range(self.n, dtype=tf.int64)
        keys = tf.random.stateless_uniform(
            [self.n], seed=tf.stack([tf.constant(self._seed, tf.int64), -1 - epoch]))
        return tf.cast(tf.argsort(keys, stable=True), tf.int64)

    def _make_batch(self, epoch, batch_index, index, mean, std):
        gen = self.image_data_generator
        if self._images is not None:
            x = tf.gather(self._images, index)
        else:
            x = tf.map_fn(self._load, tf.gather(self._paths, index),
                          fn_output_signature=tf.uint8, parallel_iterations=self.batch_size)
        x = tf.cast(x, tf.float32)
        seed = tf.stack([tf.constant(self._seed, tf.int64), epoch * len(self) + batch_index])
        x = augment_images(x, gen.augmentation, seed)
        if self.data_format == "channels_first":
            x = tf.transpose(x, [0, 3, 1, 2])
        x = tf.cast(gen.standardize_tensor(x, mean, std), self.dtype)
        if self.class_mode == "input":
            return x, x
        if self._targets is None:
            return x
        y = tf.gather(self._targets, index)
        if self._weights is None:
            return x, y
        return x, y, tf.gather(self._weights, index)

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"Expected a batch index in [0, {len(self)}). Received: {index}")
        epoch = self._epoch_for(index)
        perm = self._perms.get(epoch)
        if perm is None:
            perm = self._permutation(tf.constant(epoch, tf.int64)).numpy()
            # Keep the last two epochs: fit may prefetch the next one early.
            self._perms = {e: self._perms[e] for e in sorted(self._perms)[-1:]}
            self._perms[epoch] = perm
        index_array = perm[index * self.batch_size:(index + 1) * self.batch_size]
        out = self._batch(tf.constant(epoch, tf.int64), tf.constant(index, tf.int64),
                          tf.constant(index_array, tf.int64), *self._stats())
        return self._to_numpy(out)

    def __iter__(self):
        return self

    def __next__(self):
        if self._stream is None:
            self._stream = iter(self.as_dataset(repeat=True))
        return self._to_numpy(next(self._stream))

    def _to_numpy(self, out):
        """A batch of tensors as NumPy; string labels come back as ``str``, as given."""
        if not isinstance(out, tuple):
            return out.numpy()
        out = [t.numpy() for t in out]
        if out[1].dtype == object and self._label_dtype is not None:  # bytes from tf.string
            out[1] = np.char.decode(out[1].astype(bytes), "utf-8").astype(self._label_dtype)
        return tuple(out)

    def as_dataset(self, repeat=False, start_epoch=0):
        """This iterator's batches as a prefetched ``tf.data.Dataset``.

        Args:
            repeat: bool. If False, the dataset is one epoch long and each new
                pass over it (each ``model.fit`` epoch) is the next epoch, with
                a new order and augmentation. If True, it runs epoch after
                epoch forever (use ``steps_per_epoch``).
            start_epoch: int. Epoch of the first pass.

        Returns:
            A ``tf.data.Dataset`` of ``x``, ``(x, y)`` or ``(x, y, sample_weight)``
            tensors; batch ``i`` of epoch ``e`` equals ``iterator[i]`` at epoch ``e``.

        Example:

        >>> from fmkeras.data import ImageDataGenerator
        >>> it = ImageDataGenerator().flow(np.zeros((6, 4, 4, 3)), np.arange(6), batch_size=4)
        >>> [int(y.shape[0]) for _, y in it.as_dataset()]
        [4, 2]
        """
        mean, std = self._stats()
        size, num_batches = self.batch_size, len(self)

        def epoch_batches(epoch):
            perm = tf.cast(self._permutation(epoch), tf.int64)

            def slice_batch(b):
                return epoch, b, perm[b * size:(b + 1) * size]

            return tf.data.Dataset.range(num_batches).map(slice_batch)

        def make_batch(epoch, b, index):
            return self._make_batch(epoch, b, index, mean, std)

        if repeat:
            epochs = tf.data.Dataset.counter(start_epoch, dtype=tf.int64)
        else:
            counter = tf.Variable(start_epoch, dtype=tf.int64, trainable=False)
            self._dataset_counter = counter  # keep it alive with the iterator

            def next_epoch(_):
                return counter.assign_add(1) - 1

            epochs = tf.data.Dataset.range(1).map(next_epoch)
        ds = epochs.flat_map(epoch_batches).map(
            make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if not repeat:
            ds = ds.apply(tf.data.experimental.assert_cardinality(num_batches))
        return ds.prefetch(tf.data.AUTOTUNE)


class _FileIterator(ImageIterator):
    """Shared set-up of the iterators that read image files."""

    def _read_files(self, generator, paths, target_size, color_mode, interpolation, cache,
                    validate, max_bad_fraction, bad=()):
        channels = check_color_mode(color_mode)
        if (not isinstance(target_size, (tuple, list)) or len(target_size) != 2
                or not all(isinstance(s, int) and s > 0 for s in target_size)):
            raise FmkerasError(
                f"Expected target_size=(height, width) of positive ints. Received: {target_size!r}")
        if cache not in ("auto", True, False):
            raise FmkerasError(f"Expected cache 'auto', True or False. Received: {cache!r}")
        self.target_size = tuple(target_size)
        self.color_mode = color_mode
        self.interpolation = interpolation
        hwc = self.target_size + (channels,)
        self.image_shape = hwc if generator.data_format == "channels_last" else (
            (channels,) + self.target_size)
        generator._check_fitted(channels)  # before decoding every file
        load = _image_loader(self.target_size, channels, interpolation)
        if cache == "auto":
            cache = len(paths) * math.prod(hwc) <= _AUTO_CACHE_BYTES
        # Filling the cache decodes every image, which validates them anyway.
        good, images = read_images(paths, load, cache, validate or cache,
                                    max_bad_fraction, bad)
        return load, good, images


class DirectoryIterator(_FileIterator):
    """Batches from a ``directory/<class>/<image>`` folder; see ``flow_from_directory``.

    Attributes:
        directory: str. The root folder.
        filenames: list of str. Paths relative to ``directory``, in batch order
            when ``shuffle=False``.
        filepaths: list of str. Full paths.
        classes: np.ndarray of int32. Class index of each image.
        class_indices: dict. Class folder name -> index.
        num_classes: int.

    Example:

    >>> from fmkeras.data import ImageDataGenerator
    >>> it = ImageDataGenerator().flow_from_directory(
    ...     "data/digits/test", target_size=(8, 8), batch_size=8, shuffle=False)
    Found 360 images belonging to 10 classes.
    >>> x, y = it[0]
    >>> x.shape, y.shape, it.filenames[0], int(it.classes[0])
    ((8, 8, 8, 3), (8, 10), '0/0020.png', 0)
    """

    allowed_class_modes = ("categorical", "binary", "sparse", "input", None)

    def __init__(self, directory, image_data_generator, target_size=(256, 256),
                 color_mode="rgb", classes=None, class_mode="categorical", batch_size=32,
                 shuffle=True, seed=None, follow_links=False, subset=None,
                 interpolation="nearest", cache="auto", validate_images=True,
                 max_bad_fraction=0.05):
        gen = image_data_generator
        if class_mode not in self.allowed_class_modes:
            raise FmkerasError(
                f"Expected class_mode in {self.allowed_class_modes}. "
                f"Received: class_mode={class_mode!r}")
        index = index_directory(directory, classes=classes, follow_links=follow_links)
        self.directory = index.directory
        self.class_indices = {name: i for i, name in enumerate(index.class_names)}
        self.num_classes = len(index.class_names)
        keep = []
        for label in range(self.num_classes):
            members = np.flatnonzero(index.labels == label)
            start, stop = _split(subset, gen.validation_split, len(members))
            keep.extend(members[start:stop])
        filenames = [index.filenames[i] for i in keep]
        labels = index.labels[keep]
        all_paths = index.paths
        paths = [str(all_paths[i]) for i in keep]
        load, good, images = self._read_files(
            gen, paths, target_size, color_mode, interpolation, cache, validate_images,
            max_bad_fraction)
        self.subset = subset
        self.filenames = [filenames[i] for i in good]
        self.filepaths = [paths[i] for i in good]
        self.classes = labels[good].astype(np.int32)
        self.labels = self.classes
        print(f"Found {len(self.filenames)} images belonging to {self.num_classes} classes.")
        super().__init__(
            gen, images=images, paths=None if images is not None else self.filepaths,
            load=load, targets=_class_targets(self.classes, self.num_classes, class_mode,
                                              gen.dtype),
            class_mode=class_mode, batch_size=batch_size, shuffle=shuffle, seed=seed)


def _class_targets(classes, num_classes, class_mode, dtype):
    if class_mode == "categorical":
        targets = np.zeros((len(classes), num_classes), dtype)
        for row, label in enumerate(classes):
            targets[row, label] = 1.0
        return targets
    if class_mode in ("binary", "sparse"):
        return np.asarray(classes, dtype)
    return None


def _column(table, name):
    if isinstance(table, (list, tuple, str, np.ndarray)) or not hasattr(table, "__getitem__"):
        raise DataError(f"Expected a pandas DataFrame (or a dict of columns). "
                        f"Received: {type(table).__name__}")
    try:
        return list(table[name])
    except (KeyError, IndexError, TypeError):
        columns = list(getattr(table, "columns", None) or getattr(table, "keys", list)())
        raise DataError(f"Column {name!r} not found. Expected one of the columns "
                        f"{columns}. Received: column {name!r}") from None


class DataFrameIterator(_FileIterator):
    """Batches from a table of file names and labels; see ``flow_from_dataframe``.

    Attributes are those of :class:`DirectoryIterator` (``class_indices`` and
    ``classes`` only for class modes with classes).

    Example:

    >>> from fmkeras.data import ImageDataGenerator
    >>> table = {"filename": ["0/0000.png", "1/0001.png"], "class": ["0", "1"]}
    >>> it = ImageDataGenerator().flow_from_dataframe(
    ...     table, "data/digits/train", target_size=(8, 8), class_mode="sparse", shuffle=False)
    Found 2 validated image filenames belonging to 2 classes.
    >>> it.filenames, it.classes, it[0][1].tolist()
    (['0/0000.png', '1/0001.png'], [0, 1], [0.0, 1.0])
    """

    allowed_class_modes = ("categorical", "binary", "sparse", "raw", "input", None)

    def __init__(self, dataframe, directory, image_data_generator, x_col="filename",
                 y_col="class", weight_col=None, target_size=(256, 256), color_mode="rgb",
                 classes=None, class_mode="categorical", batch_size=32, shuffle=True, seed=None,
                 subset=None, interpolation="nearest", validate_images=True, cache="auto",
                 max_bad_fraction=0.05):
        gen = image_data_generator
        if class_mode not in self.allowed_class_modes:
            raise FmkerasError(
                f"Expected class_mode in {self.allowed_class_modes}. "
                f"Received: class_mode={class_mode!r}")
        self.directory = "" if directory is None else str(directory)
        names = _column(dataframe, x_col)
        if not all(isinstance(f, str) for f in names):
            raise DataError(f"Expected strings in column x_col={x_col!r}. Received: {names[:5]}")
        with_classes = class_mode in ("categorical", "binary", "sparse")
        ys = (_column(dataframe, y_col) if isinstance(y_col, str)
              else list(zip(*(_column(dataframe, c) for c in y_col)))) if class_mode in (
                  "categorical", "binary", "sparse", "raw") else [None] * len(names)
        weights = _column(dataframe, weight_col) if weight_col else [None] * len(names)
        rows = list(zip(names, ys, weights))
        if with_classes:
            rows, class_names = _filter_classes(rows, classes, class_mode, y_col)
            self.class_indices = {c: i for i, c in enumerate(class_names)}
            self.num_classes = len(class_names)
        paths = [_join(self.directory, r[0]) for r in rows]
        missing = []
        if validate_images:  # as legacy Keras: unusable files leave before the split
            kept, _, missing = scan_images(paths, load=None, decode=False)
            rows, paths = [rows[i] for i in kept], [paths[i] for i in kept]
        start, stop = _split(subset, gen.validation_split, len(rows))
        rows, paths = rows[start:stop], paths[start:stop]
        load, good, images = self._read_files(
            gen, paths, target_size, color_mode, interpolation, cache, validate_images,
            max_bad_fraction, bad=missing)
        rows = [rows[i] for i in good]
        self.subset = subset
        self.filenames = [r[0] for r in rows]
        self.filepaths = [paths[i] for i in good]
        targets = None
        if with_classes:
            self.classes = [self._encode(r[1]) for r in rows]
            targets = self._targets_for(self.classes, class_mode, gen.dtype)
        elif class_mode == "raw":
            targets = np.asarray([r[1] for r in rows])
        self.labels = self.classes if with_classes else targets
        sample_weight = np.asarray([r[2] for r in rows], np.float32) if weight_col else None
        print(f"Found {len(self.filenames)} validated image filenames" + (
            f" belonging to {self.num_classes} classes." if with_classes else "."))
        super().__init__(
            gen, images=images, paths=None if images is not None else self.filepaths,
            load=load, targets=targets, sample_weight=sample_weight, class_mode=class_mode,
            batch_size=batch_size, shuffle=shuffle, seed=seed)

    def _encode(self, label):
        if isinstance(label, (list, tuple)):
            return [self.class_indices[c] for c in label]
        return self.class_indices[label]

    def _targets_for(self, classes, class_mode, dtype):
        if class_mode == "categorical":
            targets = np.zeros((len(classes), self.num_classes), dtype)
            for row, label in enumerate(classes):
                targets[row, label] = 1.0
            return targets
        return np.asarray(classes, dtype)


def _join(directory, name):
    """``directory/name``; an absolute ``name`` stays as it is (``os.path.join``, as legacy)."""
    return os.path.join(directory, name) if directory else name


def _filter_classes(rows, classes, class_mode, y_col):
    for _, label, _ in rows:
        ok = isinstance(label, str) or (class_mode == "categorical"
                                        and isinstance(label, (list, tuple)))
        if not ok:
            raise DataError(
                f"Expected string labels in y_col={y_col!r} for class_mode={class_mode!r} "
                f"(or lists of strings for 'categorical'). Received: {label!r}")
    if classes:
        class_names = list(dict.fromkeys(classes))
        allowed = set(class_names)
        kept = []
        for name, label, weight in rows:
            if isinstance(label, str):
                if label in allowed:
                    kept.append((name, label, weight))
            else:
                label = [c for c in label if c in allowed]
                if label:
                    kept.append((name, label, weight))
        rows = kept
    else:
        found = set()
        for _, label, _ in rows:
            found.update([label] if isinstance(label, str) else label)
        class_names = sorted(found)
    if class_mode == "binary" and len(class_names) != 2:
        raise DataError(f"class_mode='binary' needs exactly 2 classes. "
                        f"Received: {len(class_names)} classes {class_names[:10]}")
    return rows, class_names


class NumpyArrayIterator(ImageIterator):
    """Batches from an image array; see ``ImageDataGenerator.flow``.

    Attributes:
        x: np.ndarray. The images, in the generator's data format and dtype.
        y: optional np.ndarray. The labels.

    Example:

    >>> from fmkeras.data import ImageDataGenerator
    >>> it = ImageDataGenerator().flow(np.zeros((5, 4, 4, 3)), batch_size=2)
    >>> len(it)
    3
    """

    def __init__(self, x, y, image_data_generator, batch_size=32, shuffle=False,
                 sample_weight=None, seed=None, subset=None, ignore_class_split=False):
        gen = image_data_generator
        if isinstance(x, (tuple, list)):
            raise FmkerasError("Expected x to be one image array; extra inputs as a tuple are "
                               f"not supported. Received: a {type(x).__name__}")
        x = np.asarray(x, dtype=gen.dtype)
        if x.ndim != 4:
            raise DataError(f"Expected x of rank 4 (batch, height, width, channels). "
                            f"Received: x.shape={x.shape}")
        for name, other in (("y", y), ("sample_weight", sample_weight)):
            if other is not None and len(other) != len(x):
                raise DataError(f"Expected {name} with one row per image ({len(x)}). "
                                f"Received: len({name})={len(other)}")
        start, stop = _split(subset, gen.validation_split, len(x))
        if (subset and y is not None and not ignore_class_split
                and not np.array_equal(np.unique(y[:int(gen.validation_split * len(x))]),
                                       np.unique(y[int(gen.validation_split * len(x)):]))):
            raise DataError("The training and validation subsets hold different classes; "
                            "shuffle x and y first, or pass ignore_class_split=True.")
        x = x[start:stop]
        self.y = None if y is None else np.asarray(y)[start:stop]
        weights = None if sample_weight is None else np.asarray(sample_weight)[start:stop]
        self.image_shape = x.shape[1:]
        gen._check_fitted(self.image_shape[gen.channel_axis - 1])
        images = x if gen.data_format == "channels_last" else x.transpose(0, 2, 3, 1)
        images = images.astype(np.float32, copy=False)
        # Float32 channels-last images are held once, by TensorFlow; ``x`` is
        # made from them when asked for (a second copy doubled the memory).
        self._x = None if images is x else x
        super().__init__(gen, images=images, targets=self.y,
                         sample_weight=weights, class_mode=None, batch_size=batch_size,
                         shuffle=shuffle, seed=seed)

    @property
    def x(self):
        """np.ndarray. The images, in the generator's data format and dtype."""
        if self._x is None:
            self._x = self._images.numpy()
        return self._x

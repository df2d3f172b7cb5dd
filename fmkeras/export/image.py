"""Image classifier export: serve encoded image bytes or float pixels."""

from __future__ import annotations

import shutil

import keras
import numpy as np
import tensorflow as tf

from fmkeras.data.images import decode_image
from fmkeras.export.core import (
    ExportError,
    check_class_names,
    check_export,
    check_tolerance,
    numpy_outputs,
    write_versioned,
)

# Image bytes declaring more pixels are refused before decoding: a 117 kB PNG
# can claim 11,000 x 11,000 and take gigabytes per request. Lower than
# training's limit (``fmkeras.data.image_files.MAX_PIXELS``): a server decodes
# many requests at once.
MAX_SERVING_PIXELS = 100_000_000


def declared_pixels(data):
    """Pixels an encoded image declares in its header, read in the graph before decoding.

    PNG, GIF and BMP sizes are read from their fixed header fields, JPEG's
    with ``tf.io.extract_jpeg_shape``; anything else gives 0 (decoding then
    fails with TensorFlow's own message).

    Example:

    >>> int(declared_pixels(tf.io.encode_png(tf.zeros((30, 40, 1), tf.uint8))))
    1200
    """
    head = tf.cast(tf.io.decode_raw(tf.strings.substr(data, 0, 26), tf.uint8), tf.int64)
    b = tf.pad(head, [[0, 26 - tf.shape(head)[0]]])

    def big_endian(start):
        return b[start] * 2**24 + b[start + 1] * 2**16 + b[start + 2] * 2**8 + b[start + 3]

    def little_endian(start, size):
        value = sum(b[start + i] * 2**(8 * i) for i in range(size))
        if size == 4:  # signed (a BMP's height is negative when stored top-down)
            value = tf.where(value >= 2**31, value - 2**32, value)
        return tf.abs(value)

    def jpeg():
        shape = tf.cast(tf.io.extract_jpeg_shape(data), tf.int64)
        return shape[0] * shape[1]

    return tf.case([
        (tf.logical_and(tf.equal(b[0], 0x89), tf.equal(b[1], ord("P"))),
         lambda: big_endian(16) * big_endian(20)),
        (tf.logical_and(tf.equal(b[0], 0xFF), tf.equal(b[1], 0xD8)), jpeg),
        (tf.logical_and(tf.equal(b[0], ord("G")), tf.equal(b[1], ord("I"))),
         lambda: little_endian(6, 2) * little_endian(8, 2)),
        (tf.logical_and(tf.equal(b[0], ord("B")), tf.equal(b[1], ord("M"))),
         lambda: little_endian(18, 4) * little_endian(22, 4)),
    ], default=lambda: tf.constant(0, tf.int64), exclusive=False)


def _image_size(image_size):
    """``(height, width)`` from a pair or one int (a square), as the image pipelines take."""
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    try:
        height, width = image_size
    except (TypeError, ValueError):
        raise ExportError(f"Expected image_size=(height, width) or one int. "
                          f"Received: image_size={image_size!r}") from None
    return int(height), int(width)


def image_classifier_archive(model, class_names, image_size, channels, rescale=1.0 / 255):
    """An ``ExportArchive`` serving an image classifier from encoded bytes.

    Signatures:

    - ``serving_default(image_bytes: string[batch])``: PNG/JPEG/BMP/GIF bytes
      of any size, grey or colour; decoded, converted to ``channels``,
      resized to ``image_size`` and rescaled inside the graph.
    - ``serve_images(images: float32[batch, h, w, channels])``: pixel values
      in ``[0, 255]`` at the model's size.

    Both return ``probabilities`` (float32) and ``label`` (class-name strings).

    Args:
        model: a ``keras.Model`` mapping rescaled images to probabilities.
        class_names: list of str.
        image_size: ``(height, width)``.
        channels: int. 1, 3 or 4.
        rescale: float. Factor applied to ``[0, 255]`` pixels before the model.

    Returns:
        ``(archive, serve_bytes, serve_images)``: the ``ExportArchive`` ready
        for ``write_out`` and the two serving functions, callable in memory.

    Example:

    >>> from fmkeras.models import simple_cnn
    >>> archive, _, _ = image_classifier_archive(simple_cnn((8, 8, 1), 2), ["a", "b"], (8, 8), 1)
    """
    height, width = image_size = _image_size(image_size)
    expected = tuple(model.input_shape[1:])
    if len(expected) != 3 or any(e is not None and e != got
                                 for e, got in zip(expected, (height, width, channels))):
        raise ExportError(f"Expected image_size and channels matching the model's input "
                          f"{expected}. Received: image_size={tuple(image_size)!r}, "
                          f"channels={channels!r}")
    check_class_names(model, class_names)
    names = tf.constant([str(c) for c in class_names])

    classes = model.output_shape[-1]

    def outputs(pixels):
        def predict():
            return tf.cast(model(pixels * rescale, training=False), tf.float32)

        # An empty request gets empty answers (TensorFlow's CPU convolutions fail on 0 images).
        probabilities = tf.cond(tf.shape(pixels)[0] > 0, predict,
                                lambda: tf.zeros([0, classes], tf.float32))
        label = tf.gather(names, tf.argmax(probabilities, axis=-1))
        return {"probabilities": probabilities, "label": label}

    def decode(data):
        # A small file can declare a huge image: refuse it before decoding, as
        # training does, so one request cannot exhaust the server's memory.
        checked = tf.debugging.assert_less_equal(
            declared_pixels(data), tf.constant(MAX_SERVING_PIXELS, tf.int64),
            message=f"Expected images of at most {MAX_SERVING_PIXELS:,} pixels")
        with tf.control_dependencies([checked]):
            return decode_image(data, channels, (height, width))

    def serve_bytes(image_bytes):
        pixels = tf.map_fn(
            decode,
            image_bytes, fn_output_signature=tf.TensorSpec((height, width, channels), tf.float32))
        return outputs(pixels)

    def serve_images(images):
        # A signature does not enforce its shape: refuse wrong sizes instead of
        # answering with confident nonsense.
        images = tf.ensure_shape(images, (None, height, width, channels))
        return outputs(tf.cast(images, tf.float32))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve_bytes, input_signature=[
        tf.TensorSpec((None,), tf.string, name="image_bytes")])
    archive.add_endpoint("serve_images", serve_images, input_signature=[
        tf.TensorSpec((None, height, width, channels), tf.float32, name="images")])
    return archive, serve_bytes, serve_images


def export_image_classifier(model, export_root, name, class_names, image_size, channels,
                            rescale=1.0 / 255, sample_bytes=None, version=None, check=True):
    """Export an image classifier for TF Serving and check the result.

    Args:
        model: ``keras.Model``. Maps rescaled images to probabilities.
        export_root: str. E.g. ``<run_dir>/export``.
        name: str. Model name, the folder under ``export_root``.
        class_names: list of str. Returned as ``label``.
        image_size: ``(height, width)`` the model expects.
        channels: int. Colour channels the model expects.
        rescale: float. Factor from ``[0, 255]`` pixels to model inputs.
        sample_bytes: optional list of encoded images used by the check;
            random PNGs are generated when omitted.
        version: optional int. Defaults to the next free version.
        check: bool. Reload in a separate process (without fmkeras) and compare at two batch sizes.

    Returns:
        str. The version folder written.

    Example:

    >>> import os, tempfile
    >>> from fmkeras.models import simple_cnn
    >>> path = export_image_classifier(simple_cnn((8, 8, 1), 2), tempfile.mkdtemp(), "demo",
    ...                                ["a", "b"], (8, 8), 1, check=False)
    >>> os.path.exists(os.path.join(path, "saved_model.pb"))
    True
    """
    image_size = _image_size(image_size)
    archive, serve_bytes, serve_images = image_classifier_archive(
        model, class_names, image_size, channels, rescale)
    path = write_versioned(export_root, name,
                           lambda p: archive.write_out(p, verbose=False), version)
    if check:
        if not sample_bytes:
            rng = np.random.default_rng(0)
            sample_bytes = [tf.io.encode_png(rng.integers(0, 256, (13 + i, 11, channels),
                                                          dtype=np.uint8)).numpy()
                            for i in range(3)]
        sample_bytes = list(sample_bytes)
        cases = []
        for batch in (sample_bytes[:1], sample_bytes[:3]):
            expected = serve_bytes(tf.constant(batch))
            cases.append({"signature": "serving_default", "input": "image_bytes",
                          "value": batch, "expected": numpy_outputs(expected)})
        for n in (1, 3):
            images = np.random.default_rng(n).uniform(
                0, 255, (n, *image_size, channels)).astype(np.float32)
            cases.append({"signature": "serve_images", "input": "images", "value": images,
                          "expected": numpy_outputs(serve_images(tf.constant(images)))})
        try:
            check_export(path, cases, atol=check_tolerance(model))
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
    return path

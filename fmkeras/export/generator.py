"""Image generator export: serve a latent batch or a (batch size, seed) request."""

from __future__ import annotations

import shutil

import keras
import numpy as np
import tensorflow as tf

from fmkeras.errors import FmkerasError
from fmkeras.export.core import check_export, check_tolerance, numpy_outputs, write_versioned

# The most images one ``sample`` request may ask for (a request is one batch in memory).
MAX_SAMPLE_BATCH = 4096


def _num_classes(generator):
    if len(generator.inputs) == 1:
        return None
    try:
        return int(generator.get_layer("label_embedding").input_dim)
    except ValueError:
        raise FmkerasError(
            "Expected a conditional generator with a 'label_embedding' layer (as built by "
            f"dcgan_generator). Received: a generator with layers "
            f"{[layer.name for layer in generator.layers]}") from None


def to_uint8(images):
    """Map generator outputs in [-1, 1] to uint8 pixels in [0, 255] (rounded, clipped).

    Example:

    >>> to_uint8(tf.constant([-1.0, 0.0, 1.0])).numpy().tolist()
    [0, 128, 255]
    """
    pixels = (tf.cast(images, tf.float32) + 1.0) * 127.5
    return tf.cast(tf.clip_by_value(tf.round(pixels), 0.0, 255.0), tf.uint8)


def _checked(values, low, high, name):
    """``values`` after in-graph checks that they lie in ``[low, high)`` (``high`` None: no cap)."""
    expected = f"[{low}, {high})" if high is not None else f">= {low}"
    checks = [tf.debugging.assert_greater_equal(
        values, tf.cast(low, values.dtype), message=f"Expected {name} {expected}")]
    if high is not None:
        checks.append(tf.debugging.assert_less(
            values, tf.cast(high, values.dtype), message=f"Expected {name} {expected}"))
    with tf.control_dependencies(checks):
        return tf.identity(values)


def _generator_of(model):
    """``model``, or the generator of an :class:`fmkeras.models.GAN`."""
    if isinstance(getattr(model, "generator", None), keras.Model):
        return model.generator
    if not isinstance(model, keras.Model) or not getattr(model, "inputs", None):
        raise FmkerasError(f"Expected a functional keras.Model generator, or a GAN. "
                           f"Received: {type(model).__name__}")
    return model


def generator_archive(generator):
    """An ``ExportArchive`` serving a (DCGAN) generator.

    Signatures:

    - ``serving_default(latents: float32[batch, latent_dim])`` (plus
      ``labels: int32[batch]`` for a class-conditional generator): returns
      ``images``, uint8 ``[batch, h, w, c]`` in [0, 255].
    - ``sample(batch_size: int32[], seed: int32[])``: draws the latents with
      ``tf.random.stateless_normal`` (and, when conditional, the labels with
      ``tf.random.stateless_uniform``) so one seed always gives the same
      images; returns ``images`` (and ``labels`` when conditional).
      ``batch_size`` is at most ``MAX_SAMPLE_BATCH`` (4096); non-finite
      latents are refused.

    Args:
        generator: ``keras.Model`` mapping latents (and ``(batch, 1)``
            labels) to images in [-1, 1].

    Returns:
        ``(archive, serve_latents, sample)``: the archive ready for
        ``write_out`` and the two serving functions, callable in memory.

    Example:

    >>> from fmkeras.models import dcgan_generator
    >>> archive, serve, sample = generator_archive(dcgan_generator(8, (16, 16, 1), 8))
    >>> sample(tf.constant(2), tf.constant(0))["images"].dtype
    tf.uint8
    """
    generator = _generator_of(generator)
    latent_dim = int(generator.inputs[0].shape[-1])
    num_classes = _num_classes(generator)
    latent_spec = tf.TensorSpec((None, latent_dim), tf.float32, name="latents")

    def generate(latents, labels=None):
        # NaN would come out as a black image: refuse non-finite latents.
        latents = tf.debugging.assert_all_finite(latents, "Expected finite latents")
        if labels is not None:
            # An unchecked label outside the table gathers zeros on a GPU: refuse it.
            labels = _checked(labels, 0, num_classes, "labels")
        inputs = latents if labels is None else [latents, tf.reshape(labels, (-1, 1))]
        return to_uint8(generator(inputs, training=False))

    def sample(batch_size, seed):
        batch_size = _checked(batch_size, 0, MAX_SAMPLE_BATCH + 1, "batch_size")
        seeds = tf.stack([tf.cast(seed, tf.int32), tf.constant(0, tf.int32)])
        latents = tf.random.stateless_normal((batch_size, latent_dim), seed=seeds)
        if num_classes is None:
            return {"images": generate(latents)}
        labels = tf.random.stateless_uniform((batch_size,), seed=seeds + [0, 1], minval=0,
                                             maxval=num_classes, dtype=tf.int32)
        return {"images": generate(latents, labels), "labels": labels}

    archive = keras.export.ExportArchive()
    archive.track(generator)
    if num_classes is None:
        def serve_latents(latents):
            return {"images": generate(latents)}

        archive.add_endpoint("serving_default", serve_latents, input_signature=[latent_spec])
    else:
        def serve_latents(latents, labels):
            return {"images": generate(latents, labels)}

        archive.add_endpoint("serving_default", serve_latents, input_signature=[
            latent_spec, tf.TensorSpec((None,), tf.int32, name="labels")])
    archive.add_endpoint("sample", sample, input_signature=[
        tf.TensorSpec((), tf.int32, name="batch_size"), tf.TensorSpec((), tf.int32, name="seed")])
    return archive, serve_latents, sample


def export_generator(generator, export_root, name, version=None, check=True):
    """Export an image generator for TF Serving and check the result.

    Args:
        generator: ``keras.Model``. Maps latents (and labels) to images in
            [-1, 1]; a :class:`fmkeras.models.GAN` exports its generator.
        export_root: str. E.g. ``<run_dir>/export``.
        name: str. Model name, the folder under ``export_root``.
        version: optional int. Defaults to the next free version.
        check: bool. Reload in a separate process without fmkeras and compare both
            signatures with the in-memory model at batch sizes 1 and 3.

    Returns:
        str. The version folder written.

    Example:

    >>> import os, tempfile
    >>> from fmkeras.models import dcgan_generator
    >>> path = export_generator(dcgan_generator(8, (16, 16, 1), 8), tempfile.mkdtemp(),
    ...                         "demo", check=False)
    >>> os.path.exists(os.path.join(path, "saved_model.pb"))
    True
    """
    generator = _generator_of(generator)
    archive, serve_latents, sample = generator_archive(generator)
    path = write_versioned(export_root, name,
                           lambda p: archive.write_out(p, verbose=False), version)
    if check:
        try:
            check_export(path, generator_check_cases(generator, serve_latents, sample),
                         atol=check_tolerance(generator))
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
    return path


def generator_check_cases(generator, serve_latents, sample, batch_sizes=(1, 3)):
    """``check_export`` cases for both signatures at each of ``batch_sizes``.

    Example:

    >>> from fmkeras.models import dcgan_generator
    >>> gen = dcgan_generator(8, (16, 16, 1), 8)
    >>> len(generator_check_cases(gen, *generator_archive(gen)[1:]))
    4
    """
    latent_dim = int(generator.inputs[0].shape[-1])
    num_classes = _num_classes(generator)
    cases = []
    for n in batch_sizes:
        inputs = {"latents": np.random.default_rng(n).standard_normal(
            (n, latent_dim)).astype(np.float32)}
        if num_classes is not None:
            inputs["labels"] = (np.arange(n) % num_classes).astype(np.int32)
        expected = serve_latents(**{k: tf.constant(v) for k, v in inputs.items()})
        cases.append({"signature": "serving_default", "inputs": inputs,
                      "expected": numpy_outputs(expected)})
        request = {"batch_size": np.int32(n), "seed": np.int32(7)}
        expected = sample(tf.constant(np.int32(n)), tf.constant(np.int32(7)))
        cases.append({"signature": "sample", "inputs": request,
                      "expected": numpy_outputs(expected)})
    return cases

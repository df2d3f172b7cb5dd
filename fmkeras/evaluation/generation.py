"""Sample-quality metrics for generative models: FID, Inception Score and KID.

Every metric works on features from a pluggable extractor:

- `inception_extractor()`: InceptionV3 pool features (2048-d) and ImageNet
  class probabilities, the standard setting for natural images.
- `classifier_extractor(model)`: the penultimate layer and softmax of any
  Keras classifier, e.g. an MNIST CNN ("classifier FID", as TF-GAN reports
  for MNIST).
- any callable mapping an image batch to features, or to
  `(features, probabilities)`.

Feature statistics are accumulated batch by batch in float64, so a data set
never needs to fit in memory as features.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from fmkeras._scalars import accepts_numpy_scalars
from fmkeras.config import is_count
from fmkeras.errors import FmkerasError, keras_download

INCEPTION_SIZE = 299


@dataclasses.dataclass(frozen=True)
class FeatureExtractor:
    """A named function from an image batch to `(features, probabilities)`.

    Attributes:
        name: str. Shown in reports (`"inception_v3"`, `"classifier:<name>"`).
        apply: callable. Takes a `(batch, h, w, c)` float array and returns
            `(features, probabilities)` as NumPy arrays; `probabilities` may
            be None when the extractor has no classifier head.
        model: keras.Model or None. The network behind `apply`, if any.

    Example:

    >>> flatten = FeatureExtractor("flatten", lambda x: (x.reshape(len(x), -1), None))
    >>> features, probabilities = flatten(np.zeros((2, 4, 4, 1)))
    >>> features.shape, probabilities
    ((2, 16), None)
    """

    name: str
    apply: Callable
    model: keras.Model | None = None

    def __call__(self, images):
        return self.apply(images)


@dataclasses.dataclass(frozen=True)
class FeatureStatistics:
    """Mean and covariance of a set of feature vectors.

    Attributes:
        mean: np.ndarray. `(d,)`, float64.
        covariance: np.ndarray. `(d, d)`, float64, unbiased (n - 1).
        count: int. Number of feature vectors.

    Example:

    >>> real = FeatureStatistics(mean=np.zeros(2), covariance=np.eye(2), count=100)
    >>> fake = FeatureStatistics(mean=np.ones(2), covariance=np.eye(2), count=100)
    >>> round(fid(real, fake, extractor=None), 6)  # precomputed: no extractor needed
    2.0
    """

    mean: np.ndarray
    covariance: np.ndarray
    count: int


def _features_and_probs(extractor, images):
    out = extractor(images)
    if isinstance(out, (tuple, list)):
        features, probs = out
    else:
        features, probs = out, None
    features = np.asarray(keras.ops.convert_to_numpy(features), "float64")
    features = features.reshape(len(features), -1)
    if probs is not None:
        probs = np.asarray(keras.ops.convert_to_numpy(probs), "float64")
    return features, probs


def iterate_batches(images_or_dataset, batch_size=64):
    """Yields image batches as NumPy arrays from arrays, datasets or iterables.

    Args:
        images_or_dataset: np.ndarray, tensor, `tf.data.Dataset` or iterable
            of batches. Dataset elements may be `(images, labels)` tuples, in
            which case the labels are dropped; unbatched datasets are batched.
        batch_size: int. Batch size for arrays and unbatched datasets.

    Example:

    >>> [b.shape for b in iterate_batches(np.zeros((5, 8, 8, 1)), batch_size=2)]
    [(2, 8, 8, 1), (2, 8, 8, 1), (1, 8, 8, 1)]
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise FmkerasError(f"Expected a positive integer batch size. Received: {batch_size!r}")
    if isinstance(images_or_dataset, tf.data.Dataset):
        spec = images_or_dataset.element_spec
        if isinstance(spec, (tuple, list)):
            images_or_dataset = images_or_dataset.map(lambda x, *_: x)
            spec = spec[0]
        if spec.shape.rank == 3:
            images_or_dataset = images_or_dataset.batch(batch_size)
        yield from images_or_dataset.as_numpy_iterator()
        return
    if isinstance(images_or_dataset, np.ndarray) or keras.ops.is_tensor(images_or_dataset):
        images = keras.ops.convert_to_numpy(images_or_dataset)
        if images.ndim != 4:
            raise FmkerasError(
                "Expected images shaped (n, height, width, channels). "
                f"Received: shape={images.shape}"
            )
        for start in range(0, len(images), batch_size):
            yield images[start : start + batch_size]
        return
    for batch in images_or_dataset:
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        yield keras.ops.convert_to_numpy(batch)


def extract_features(images_or_dataset, extractor, batch_size=64):
    """Runs `extractor` over all images and returns features and probabilities.

    Args:
        images_or_dataset: see `iterate_batches`.
        extractor: FeatureExtractor or callable. See the module docstring.
        batch_size: int. Batch size for arrays.

    Returns:
        `(features, probabilities)`: float64 arrays `(n, d)` and `(n, k)`,
        the latter None when the extractor gives no probabilities.

    Example:

    >>> feats, _ = extract_features(np.ones((3, 4, 4, 1)), lambda x: x.reshape(len(x), -1))
    >>> feats.shape
    (3, 16)
    """
    features, probs = [], []
    for batch in iterate_batches(images_or_dataset, batch_size):
        f, p = _features_and_probs(extractor, batch)
        features.append(f)
        probs.append(p)
    if not features:
        raise FmkerasError("Expected at least one image. Received: an empty input")
    probs = None if any(p is None for p in probs) else np.concatenate(probs)
    return np.concatenate(features), probs


def feature_statistics(images_or_dataset, extractor, batch_size=64):
    """Streams images through `extractor` and returns the features' mean and covariance.

    Sums are kept in float64 around a shift (the first batch's mean) so the
    covariance does not suffer from cancellation; features are never all
    held at once.

    Args:
        images_or_dataset: see `iterate_batches`.
        extractor: FeatureExtractor or callable. See the module docstring.
        batch_size: int. Batch size for arrays.

    Returns:
        FeatureStatistics.

    Example:

    >>> stats = feature_statistics(np.random.rand(10, 4, 4, 1), lambda x: x.reshape(len(x), -1))
    >>> stats.mean.shape, stats.covariance.shape, stats.count
    ((16,), (16, 16), 10)
    """
    shift = total = outer = None
    count = 0
    for batch in iterate_batches(images_or_dataset, batch_size):
        features, _ = _features_and_probs(extractor, batch)
        if shift is None:
            shift = features.mean(axis=0)
            total = np.zeros_like(shift)
            outer = np.zeros((len(shift), len(shift)))
        centered = features - shift
        total += centered.sum(axis=0)
        outer += centered.T @ centered
        count += len(features)
    if count < 2:
        raise FmkerasError(
            f"Expected at least 2 images to estimate a covariance. Received: {count} image(s)"
        )
    mean_centered = total / count
    covariance = (outer - count * np.outer(mean_centered, mean_centered)) / (count - 1)
    return FeatureStatistics(shift + mean_centered, covariance, count)


def _check_stats(name, mu, sigma):
    mu = np.asarray(mu, "float64")
    sigma = np.asarray(sigma, "float64")
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise FmkerasError(
            f"Expected {name} as a (d,) mean and a (d, d) covariance. "
            f"Received: mean shape {mu.shape}, covariance shape {sigma.shape}"
        )
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise FmkerasError(f"Expected {name} to be finite. Received: NaN or infinite "
                           f"values (features of non-finite images?)")
    return mu, sigma


def _psd_sqrt(matrix):
    eigvals, eigvecs = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """Fréchet distance between the Gaussians N(mu1, sigma1) and N(mu2, sigma2).

    `||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr(sqrt(sigma1 sigma2))`.
    The trace of the square root is computed as the sum of the square roots
    of the eigenvalues of the symmetric `sqrt(sigma1) sigma2 sqrt(sigma1)`,
    which has the same eigenvalues as `sigma1 sigma2` but is real and
    positive semi-definite, so singular covariances (fewer samples than
    dimensions) need no epsilon offset and no imaginary parts appear.

    Args:
        mu1: np.ndarray. `(d,)` mean of the first set.
        sigma1: np.ndarray. `(d, d)` covariance of the first set.
        mu2: np.ndarray. `(d,)` mean of the second set.
        sigma2: np.ndarray. `(d, d)` covariance of the second set.

    Returns:
        float. Non-negative up to rounding; 0 for identical statistics.

    Example:

    >>> round(frechet_distance(np.zeros(2), np.eye(2), np.ones(2), np.eye(2)), 6)
    2.0
    """
    mu1, sigma1 = _check_stats("the first statistics", mu1, sigma1)
    mu2, sigma2 = _check_stats("the second statistics", mu2, sigma2)
    if len(mu1) != len(mu2):
        raise FmkerasError(
            f"Expected statistics of the same dimension. Received: {len(mu1)} and {len(mu2)}"
        )
    root1 = _psd_sqrt(sigma1)
    product = root1 @ sigma2 @ root1
    eigvals = np.linalg.eigvalsh((product + product.T) / 2.0)
    trace_sqrt = np.sqrt(np.clip(eigvals, 0.0, None)).sum()
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt
    return float(max(value, 0.0))


def fid(real, fake, extractor, batch_size=64):
    """Fréchet Inception Distance between real and generated images.

    Args:
        real: images (see `iterate_batches`) or FeatureStatistics computed
            once with `feature_statistics` and reused.
        fake: images or FeatureStatistics.
        extractor: FeatureExtractor or callable. Must be the one that made
            any precomputed statistics.
        batch_size: int. Batch size for arrays.

    Returns:
        float. Lower is better; 0 for identical feature statistics.

    Example:

    >>> x = np.random.rand(20, 4, 4, 1)
    >>> fid(x, x, lambda b: b.reshape(len(b), -1)) < 1e-6
    True
    """
    stats = [
        s if isinstance(s, FeatureStatistics) else feature_statistics(s, extractor, batch_size)
        for s in (real, fake)
    ]
    return frechet_distance(stats[0].mean, stats[0].covariance, stats[1].mean, stats[1].covariance)


@accepts_numpy_scalars
def inception_score(probs, splits=10, seed=0):
    """Inception Score `exp(E_x KL(p(y|x) || p(y)))` of class probabilities.

    Args:
        probs: np.ndarray. `(n, num_classes)` softmax outputs, rows summing
            to 1.
        splits: int. The score is computed on this many equal splits.
        seed: int. The rows are shuffled (with this seed) before they are
            split, so ordered input (e.g. sorted by class, where each
            contiguous split would hold one class and score ~1) scores
            as shuffled input does.

    Returns:
        `(mean, std)` over the splits. 1 means no class information;
        at most `num_classes`.

    Example:

    >>> inception_score(np.full((10, 4), 0.25), splits=2)
    (1.0, 0.0)
    """
    probs = np.asarray(probs, "float64")
    if probs.ndim != 2 or len(probs) == 0:
        raise FmkerasError(f"Expected probabilities shaped (n, classes). Received: {probs.shape}")
    if np.any(probs < 0) or not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3):
        raise FmkerasError(
            "Expected softmax probabilities (non-negative, rows summing to 1). "
            f"Received: row sums in [{probs.sum(axis=1).min():.4g}, {probs.sum(axis=1).max():.4g}]"
        )
    if isinstance(splits, bool) or not isinstance(splits, int) or not 1 <= splits <= len(probs):
        raise FmkerasError(
            f"Expected an integer number of splits in [1, {len(probs)}]. "
            f"Received: splits={splits!r}"
        )
    probs = probs[np.random.default_rng(seed).permutation(len(probs))]
    scores = []
    for part in np.array_split(probs, splits):
        marginal = part.mean(axis=0, keepdims=True)
        logs = np.log(np.clip(part, 1e-12, None)) - np.log(np.clip(marginal, 1e-12, None))
        kl = np.sum(part * logs, axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def _polynomial_kernel(x, y):
    return (x @ y.T / x.shape[1] + 1.0) ** 3


@accepts_numpy_scalars
def kid(real_features, fake_features, num_subsets=100, subset_size=1000, seed=0):
    """Kernel Inception Distance: unbiased MMD^2 with a cubic polynomial kernel.

    `k(x, y) = (x.y / d + 1)^3`, averaged over random subsets drawn without
    replacement (Binkowski et al., 2018).

    Args:
        real_features: np.ndarray. `(n, d)` features of real images.
        fake_features: np.ndarray. `(m, d)` features of generated images.
        num_subsets: int. Number of subsets.
        subset_size: int. Size of each subset; capped at `min(n, m)`.
        seed: int. Seed of the subset draws.

    Returns:
        `(mean, std)` over subsets. About 0 for two samples of one
        distribution; the unbiased estimate can be slightly negative. One
        finite set compared with itself gives about
        `-2 (E k(x, x) - E k(x, y)) / n`, as independently drawn subsets
        share points.

    Example:

    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.normal(size=(50, 8)), rng.normal(size=(50, 8))
    >>> abs(kid(x, y)[0]) < 0.5 < kid(x, y + 1.0)[0]
    True
    """
    real = np.asarray(real_features, "float64")
    fake = np.asarray(fake_features, "float64")
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise FmkerasError(
            "Expected two (n, d) feature arrays of the same d. "
            f"Received: shapes {real.shape} and {fake.shape}"
        )
    if not (np.isfinite(real).all() and np.isfinite(fake).all()):
        raise FmkerasError("Expected finite features. Received: NaN or infinite values")
    for name, value in (("num_subsets", num_subsets), ("subset_size", subset_size)):
        if not is_count(value, 1):
            raise FmkerasError(f"Expected a positive integer {name}. Received: {name}={value!r}")
    m = min(subset_size, len(real), len(fake))
    if m < 2:
        raise FmkerasError(f"Expected at least 2 feature vectors per set. Received: {m}")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(num_subsets):
        x = real[rng.choice(len(real), m, replace=False)]
        y = fake[rng.choice(len(fake), m, replace=False)]
        kxx, kyy, kxy = _polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y)
        off_diagonal = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values.append(off_diagonal - 2.0 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))


def classifier_extractor(model, layer_name=None):
    """Uses a Keras classifier's penultimate layer and softmax as extractor.

    Args:
        model: keras.Model. A built classifier whose output is one
            probability (softmax) or logit vector per image.
        layer_name: str or None. Layer whose output are the features; None
            takes the layer before the last one. Features are flattened.

    Returns:
        FeatureExtractor. Its probabilities are the model's softmax; logits
        are passed through a softmax when the last layer has no softmax.

    Example:

    >>> extractor = classifier_extractor(mnist_cnn)  # doctest: +SKIP
    >>> fid(real_images, generated_images, extractor)  # doctest: +SKIP
    """
    if not isinstance(model, keras.Model) or not model.built:
        raise FmkerasError(
            f"Expected a built keras.Model classifier. Received: {type(model).__name__}"
        )
    try:
        layer = model.get_layer(layer_name) if layer_name else model.layers[-2]
    except (ValueError, IndexError):
        names = [lay.name for lay in model.layers]
        raise FmkerasError(
            f"Expected `layer_name` to be one of {names}. Received: layer_name={layer_name!r}"
        ) from None
    last = model.layers[-1]
    has_softmax = isinstance(last, keras.layers.Softmax) or (
        getattr(last, "activation", None) is keras.activations.softmax
    )
    head = keras.Model(model.input, [layer.output, model.outputs[0]], name="classifier_features")

    def apply(images):
        features, outputs = head(images, training=False)
        if not has_softmax:
            outputs = keras.ops.softmax(keras.ops.cast(outputs, "float32"), axis=-1)
        return keras.ops.convert_to_numpy(features), keras.ops.convert_to_numpy(outputs)

    return FeatureExtractor(f"classifier:{model.name}", apply, head)


def inception_extractor(weights="imagenet", include_top=True, value_range=(-1.0, 1.0)):
    """InceptionV3 pool features (2048-d) and ImageNet probabilities as extractor.

    Images are resized to 299x299 (grayscale tiled to RGB), mapped from
    `value_range` to [0, 255] and passed through InceptionV3's
    `preprocess_input`.

    Args:
        weights: str or None. `"imagenet"` (downloaded by Keras once), None
            (random weights, for tests), or the path of a local weights
            file matching `include_top`.
        include_top: bool. Keep the classifier for Inception Score; False
            builds `include_top=False, pooling="avg"` and gives no
            probabilities.
        value_range: tuple of float. Range of the input pixel values, e.g.
            `(-1, 1)` for tanh generator outputs or `(0, 255)`.

    Returns:
        FeatureExtractor.

    Example:

    >>> extractor = inception_extractor(weights=None)
    >>> feats, probs = extractor(np.zeros((2, 16, 16, 1), "float32"))
    >>> feats.shape, probs.shape
    ((2, 2048), (2, 1000))
    """
    if weights not in ("imagenet", None) and not (
        isinstance(weights, (str, os.PathLike)) and os.path.isfile(weights)
    ):
        raise FmkerasError(
            "Expected weights='imagenet', None or the path of an existing weights file. "
            f"Received: weights={weights!r}"
        )
    low, high = (float(v) for v in value_range)
    if not high > low:
        raise FmkerasError(
            f"Expected value_range=(low, high) with high > low. Received: {value_range!r}"
        )
    from keras.applications import inception_v3

    shape = (INCEPTION_SIZE, INCEPTION_SIZE, 3)
    with keras_download("the ImageNet weights of InceptionV3",
                        "weights (evaluation.inception_weights in a config)"):
        if include_top:
            base = inception_v3.InceptionV3(include_top=True, weights=weights, input_shape=shape)
            net = keras.Model(base.inputs, [base.get_layer("avg_pool").output, base.outputs[0]])
        else:
            net = inception_v3.InceptionV3(
                include_top=False, pooling="avg", weights=weights, input_shape=shape
            )

    def apply(images):
        x = keras.ops.cast(keras.ops.convert_to_tensor(images), "float32")
        if x.shape[-1] == 1:
            x = keras.ops.repeat(x, 3, axis=-1)
        x = keras.ops.image.resize(x, (INCEPTION_SIZE, INCEPTION_SIZE), interpolation="bilinear")
        x = inception_v3.preprocess_input((x - low) * (255.0 / (high - low)))
        out = net(x, training=False)
        if include_top:
            return keras.ops.convert_to_numpy(out[0]), keras.ops.convert_to_numpy(out[1])
        return keras.ops.convert_to_numpy(out), None

    return FeatureExtractor("inception_v3", apply, net)

"""FID, Inception Score and KID, and the feature extractors behind them."""

import keras
import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf

from fmkeras.errors import FmkerasError
from fmkeras.evaluation.generation import (
    FeatureStatistics,
    classifier_extractor,
    extract_features,
    feature_statistics,
    fid,
    frechet_distance,
    inception_extractor,
    inception_score,
    kid,
)

RNG = np.random.default_rng(0)
PROJECTION = RNG.normal(size=(8 * 8, 12))


def project(batch):
    """A fixed random linear feature extractor: 8x8x1 images -> 12 features."""
    return batch.reshape(len(batch), -1) @ PROJECTION


def sample_images(n=300, seed=1):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 8, 8, 1))


def reference_fid(f1, f2):
    """The usual NumPy/SciPy FID (scipy.linalg.sqrtm of the product)."""
    mu1, mu2 = f1.mean(axis=0), f2.mean(axis=0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_feature_statistics_stream_matches_numpy():
    x = sample_images(53) + 5.0  # an offset the shifted sums must handle
    stats = feature_statistics(x, project, batch_size=7)
    feats = project(x)
    assert stats.count == 53
    np.testing.assert_allclose(stats.mean, feats.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(stats.covariance, np.cov(feats, rowvar=False), rtol=1e-8, atol=1e-8)
    # A tf.data pipeline of (images, labels) batches gives the same result.
    dataset = tf.data.Dataset.from_tensor_slices((x, np.zeros(53))).batch(10)
    from_dataset = feature_statistics(dataset, project)
    np.testing.assert_allclose(from_dataset.covariance, stats.covariance, rtol=1e-8, atol=1e-8)


def test_fid_of_identical_sets_is_zero_and_rises_with_noise():
    x = sample_images()
    assert fid(x, x, project) < 1e-6
    noise = np.random.default_rng(2).normal(size=x.shape)
    scores = [fid(x, x + sigma * noise, project) for sigma in (0.05, 0.2, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(scores, scores[1:])), scores


def test_fid_matches_independent_scipy_computation():
    x = sample_images(seed=3)
    y = 0.7 * sample_images(seed=4) + 0.2
    ours = fid(x, y, project, batch_size=32)
    expected = reference_fid(project(x), project(y))
    assert ours == pytest.approx(expected, rel=1e-3)
    # Precomputed statistics of the real set can be reused.
    real_stats = feature_statistics(x, project)
    assert isinstance(real_stats, FeatureStatistics)
    assert fid(real_stats, y, project) == pytest.approx(ours, rel=1e-9)


def test_frechet_distance_closed_forms_and_singular_covariances():
    # 1-D Gaussians: (m1 - m2)^2 + (s1 - s2)^2.
    assert frechet_distance([0.0], [[4.0]], [1.0], [[9.0]]) == pytest.approx(1.0 + 1.0)
    # Fewer samples than dimensions: singular covariances stay finite.
    a, b = RNG.normal(size=(5, 20)), RNG.normal(size=(5, 20)) + 1.0
    value = frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert np.isfinite(value) and value > 0
    with pytest.raises(FmkerasError, match="Received: mean shape"):
        frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(FmkerasError, match="Expected the first statistics to be finite"):
        frechet_distance(np.full(2, np.nan), np.eye(2), np.zeros(2), np.eye(2))  # was NaN


def test_inception_score_bounds():
    assert inception_score(np.full((20, 10), 0.1), splits=4) == (pytest.approx(1.0), 0.0)
    confident = np.eye(5)[np.arange(50) % 5]
    assert inception_score(confident, splits=1)[0] == pytest.approx(5.0)
    # Sorted by class, contiguous splits would each hold one class and score 1.
    by_class = np.eye(5)[np.repeat(np.arange(5), 40)]
    mean, std = inception_score(by_class, splits=5)
    assert mean > 4.5 and std < 0.5
    assert inception_score(by_class, splits=5, seed=1) != (mean, std)
    with pytest.raises(FmkerasError, match="softmax probabilities"):
        inception_score(np.ones((4, 3)))
    with pytest.raises(FmkerasError, match="splits"):
        inception_score(np.full((4, 2), 0.5), splits=5)
    assert inception_score(np.full((4, 2), 0.5), splits=np.int64(2)) == (pytest.approx(1.0), 0.0)


def test_kid_of_identical_sets_is_about_zero_and_grows_with_shift():
    rng = np.random.default_rng(6)
    feats, other = rng.normal(size=(2000, 12)), rng.normal(size=(2000, 12))
    same, _ = kid(feats, feats, num_subsets=10, subset_size=500)
    shifted = [kid(feats, feats + s, num_subsets=10, subset_size=500)[0] for s in (0.25, 0.5)]
    assert abs(same) < 0.05 * shifted[0]
    assert 0 < shifted[0] < shifted[1]
    # Unbiased: two samples of one distribution give about 0, within noise.
    value, std = kid(feats, other, num_subsets=10, subset_size=500)
    assert abs(value) < 3 * std + 1e-3
    with pytest.raises(FmkerasError, match="same d"):
        kid(feats, feats[:, :3])
    with pytest.raises(FmkerasError, match="Received: num_subsets=0"):
        kid(feats, other, num_subsets=0)  # was (nan, nan)
    with pytest.raises(FmkerasError, match="finite features"):
        kid(np.full((4, 12), np.nan), other)


def _tiny_classifier(activation):
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten(name="flatten")(inputs)
    x = keras.layers.Dense(6, activation="relu", name="penultimate")(x)
    outputs = keras.layers.Dense(3, activation=activation, name="head")(x)
    return keras.Model(inputs, outputs, name=f"tiny_{activation or 'logits'}")


@pytest.mark.parametrize("activation", ["softmax", None])
def test_classifier_extractor_features_and_probabilities(activation):
    extractor = classifier_extractor(_tiny_classifier(activation))
    features, probs = extract_features(sample_images(10), extractor, batch_size=4)
    assert features.shape == (10, 6) and probs.shape == (10, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert fid(sample_images(20), sample_images(20, seed=5), extractor) > 0
    flat = classifier_extractor(_tiny_classifier("softmax"), layer_name="flatten")
    assert flat(sample_images(2))[0].shape == (2, 64)
    with pytest.raises(FmkerasError, match="layer_name"):
        classifier_extractor(_tiny_classifier("softmax"), layer_name="nope")


def test_inception_extractor_without_downloads(tmp_path):
    extractor = inception_extractor(weights=None)
    features, probs = extractor(np.zeros((2, 16, 16, 1), "float32"))
    assert features.shape == (2, 2048) and probs.shape == (2, 1000)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)

    # A local weights file (as one would copy onto an offline machine).
    path = str(tmp_path / "inception.weights.h5")
    extractor.model.save_weights(path)
    local = inception_extractor(weights=path, value_range=(0, 255))
    batch = np.random.default_rng(0).uniform(0, 255, (1, 16, 16, 3)).astype("float32")
    local_features, local_probs = local(batch)
    features, probs = extractor(batch / 127.5 - 1.0)  # the same pixels in [-1, 1]
    np.testing.assert_allclose(local_features, features, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(local_probs, probs, rtol=1e-4, atol=1e-6)

    with pytest.raises(FmkerasError, match="Received: weights='missing.h5'"):
        inception_extractor(weights="missing.h5")

"""Random image augmentation fused into one resampling per image.

Every random geometric transform of an image (rotation, shifts, shear, zoom
and flips) is composed into a single 3x3 matrix, and a whole batch is
resampled by one ``ImageProjectiveTransformV3`` call. Random draws are
stateless: the same ``seed`` gives the same batch whatever ran before, which
makes an epoch's augmentation reproducible.

The parameters and their meaning follow the legacy Keras
``ImageDataGenerator`` (angles in degrees, zoom ``z`` meaning ``[1-z, 1+z]``,
shifts as a fraction of the side when below 1, else in pixels), so the
matrices match ``keras.src.legacy.preprocessing.image.apply_affine_transform``
with two deliberate differences: ``width_shift_range`` moves images
horizontally and ``height_shift_range`` vertically (the legacy code swaps
them), and the centre of a non-square image is its real centre.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

from fmkeras._lazy import tf
from fmkeras.errors import FmkerasError

FILL_MODES = ("constant", "nearest", "reflect", "wrap")
INTERPOLATIONS = ("nearest", "bilinear")
# Columns of the per-image uniform draws, one per random parameter.
_THETA, _TX, _TX_SIGN, _TY, _TY_SIGN, _SHEAR, _ZX, _ZY, _FLIP_H, _FLIP_V, _CHANNEL, _BRIGHT = (
    range(12))
_NUM_DRAWS = 12


def _check_shift(name, value):
    """Return a shift spec ``(kind, values, in_fractions)`` for a legacy shift range."""
    if isinstance(value, bool):
        raise FmkerasError(f"Expected a number or a list of numbers. Received: {name}={value!r}")
    if isinstance(value, numbers.Integral):
        if value < 0:
            raise FmkerasError(f"Expected a non-negative shift. Received: {name}={value!r}")
        # Legacy: an int n draws a pixel shift from {-(n-1), ..., n-1}.
        return ("choice", tuple(float(v) for v in range(int(value))), False)
    if isinstance(value, numbers.Real):
        if value < 0:
            raise FmkerasError(f"Expected a non-negative shift. Received: {name}={value!r}")
        return ("uniform", (float(value),), value < 1)
    try:
        values = tuple(float(v) for v in value)
    except TypeError:
        raise FmkerasError(
            f"Expected a float, an int or a list of numbers. Received: {name}={value!r}") from None
    if not values:
        raise FmkerasError(f"Expected a non-empty list of shifts. Received: {name}={value!r}")
    return ("choice", values, max(values) < 1)


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """What to randomise in each image, with the legacy ``ImageDataGenerator`` meaning.

    Args:
        rotation_range: float. Rotation drawn from ``[-r, r]`` degrees.
        width_shift_range: float, int or list. Horizontal shift: a float below 1
            is a fraction of the width drawn from ``[-r, r]``, 1 or more is in
            pixels; an int ``n`` draws whole pixels from ``(-n, n)``; a list
            draws one of its values with a random sign.
        height_shift_range: same as ``width_shift_range``, vertically.
        shear_range: float. Shear angle drawn from ``[-s, s]`` degrees.
        zoom_range: float or ``(low, high)``. A float ``z`` means
            ``[1 - z, 1 + z]``; the two axes are drawn independently, and a
            value above 1 zooms out.
        horizontal_flip: bool. Flip left-right with probability 0.5.
        vertical_flip: bool. Flip upside-down with probability 0.5.
        channel_shift_range: float. Add one value from ``[-c, c]`` to every
            channel, clipped to the image's own minimum and maximum.
        brightness_range: optional ``(low, high)``. Multiply by a factor drawn
            from this range and clip to ``[0, 255]``.
        fill_mode: str. One of ``"constant"``, ``"nearest"``, ``"reflect"``,
            ``"wrap"``: how points outside the image are filled.
        cval: float. Fill value for ``fill_mode="constant"``.
        interpolation: str. ``"bilinear"`` or ``"nearest"`` resampling.

    Example:

    >>> aug = Augmentation(rotation_range=20, zoom_range=0.1, horizontal_flip=True)
    >>> images = tf.zeros((2, 32, 32, 3))
    >>> augment_images(images, aug, seed=(1, 0)).shape
    TensorShape([2, 32, 32, 3])
    """

    rotation_range: float = 0.0
    width_shift_range: object = 0.0
    height_shift_range: object = 0.0
    shear_range: float = 0.0
    zoom_range: object = 0.0
    horizontal_flip: bool = False
    vertical_flip: bool = False
    channel_shift_range: float = 0.0
    brightness_range: object = None
    fill_mode: str = "nearest"
    cval: float = 0.0
    interpolation: str = "bilinear"

    def __post_init__(self):
        for name in ("rotation_range", "shear_range", "channel_shift_range", "cval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise FmkerasError(f"Expected a number. Received: {name}={value!r}")
            if name != "cval" and value < 0:  # a range: values are drawn from [-r, r]
                raise FmkerasError(f"Expected {name} >= 0. Received: {name}={value!r}")
        zoom = self.zoom_range
        if isinstance(zoom, numbers.Real) and not isinstance(zoom, bool):
            zoom = (1.0 - zoom, 1.0 + zoom)
        elif (isinstance(zoom, (tuple, list)) and len(zoom) == 2
              and all(isinstance(z, numbers.Real) for z in zoom)):
            zoom = (float(zoom[0]), float(zoom[1]))
        else:
            raise FmkerasError(
                "Expected zoom_range to be a float or a pair of floats. "
                f"Received: zoom_range={self.zoom_range!r}")
        if not 0 < zoom[0] <= zoom[1]:
            raise FmkerasError(
                "Expected zoom_range z in [0, 1) (zooms in [1 - z, 1 + z]) or a pair "
                f"0 < low <= high. Received: zoom_range={self.zoom_range!r}")
        object.__setattr__(self, "zoom_range", zoom)
        brightness = self.brightness_range
        if brightness is not None:
            if not (isinstance(brightness, (tuple, list)) and len(brightness) == 2):
                raise FmkerasError(
                    "Expected brightness_range to be None or a pair of floats. "
                    f"Received: brightness_range={brightness!r}")
            object.__setattr__(self, "brightness_range", tuple(float(b) for b in brightness))
        if self.fill_mode not in FILL_MODES:
            raise FmkerasError(
                f"Expected fill_mode in {FILL_MODES}. Received: fill_mode={self.fill_mode!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise FmkerasError(
                f"Expected interpolation in {INTERPOLATIONS}. "
                f"Received: interpolation={self.interpolation!r}")
        _check_shift("width_shift_range", self.width_shift_range)
        _check_shift("height_shift_range", self.height_shift_range)

    @property
    def is_geometric(self):
        """Whether any geometric transform is enabled."""
        return bool(self.rotation_range or _shift_enabled(self.width_shift_range)
                    or _shift_enabled(self.height_shift_range) or self.shear_range
                    or self.zoom_range != (1.0, 1.0) or self.horizontal_flip
                    or self.vertical_flip)

    @property
    def is_identity(self):
        """Whether the augmentation leaves every image unchanged."""
        return not (self.is_geometric or self.channel_shift_range
                    or self.brightness_range is not None)


def _shift_enabled(value):
    try:
        return bool(value)
    except ValueError:  # an array-like with several values
        return True


def _draw_shift(u, u_sign, spec, size):
    kind, values, in_fractions = spec
    if kind == "uniform":
        shift = (2.0 * u - 1.0) * values[0]
    else:
        table = tf.constant(values, tf.float32)
        pick = tf.minimum(tf.cast(u * len(values), tf.int32), len(values) - 1)
        shift = tf.gather(table, pick) * tf.where(u_sign < 0.5, -1.0, 1.0)
    return shift * float(size) if in_fractions else shift


def random_affine_params(aug, batch_size, height, width, seed):
    """Draw the random parameters of a batch, in the legacy units.

    Args:
        aug: :class:`Augmentation`.
        batch_size: int or scalar tensor. Number of images.
        height: int. Image height in pixels.
        width: int. Image width in pixels.
        seed: shape ``[2]`` integer tensor or pair. Stateless random seed.

    Returns:
        A dict of ``[batch_size]`` float32 tensors: ``theta`` and ``shear``
        (degrees), ``tx`` and ``ty`` (pixels), ``zx`` and ``zy``, ``flip_h`` and
        ``flip_v`` (0 or 1), ``channel_shift`` and ``brightness``.

    Example:

    >>> p = random_affine_params(Augmentation(rotation_range=10), 4, 8, 8, (0, 1))
    >>> p["theta"].shape
    TensorShape([4])
    """
    seed = tf.cast(seed, tf.int64)
    u = tf.random.stateless_uniform([batch_size, _NUM_DRAWS], seed=seed)
    zero = tf.zeros_like(u[:, 0])

    def sym(column, bound):
        return (2.0 * u[:, column] - 1.0) * bound if bound else zero

    low, high = aug.zoom_range
    zoom = (low, high) != (1.0, 1.0)
    params = {
        "theta": sym(_THETA, float(aug.rotation_range)),
        "tx": (_draw_shift(u[:, _TX], u[:, _TX_SIGN],
                           _check_shift("width_shift_range", aug.width_shift_range), width)
               if _shift_enabled(aug.width_shift_range) else zero),
        "ty": (_draw_shift(u[:, _TY], u[:, _TY_SIGN],
                           _check_shift("height_shift_range", aug.height_shift_range), height)
               if _shift_enabled(aug.height_shift_range) else zero),
        "shear": sym(_SHEAR, float(aug.shear_range)),
        "zx": low + (high - low) * u[:, _ZX] if zoom else zero + 1.0,
        "zy": low + (high - low) * u[:, _ZY] if zoom else zero + 1.0,
        "flip_h": tf.cast(u[:, _FLIP_H] < 0.5, tf.float32) if aug.horizontal_flip else zero,
        "flip_v": tf.cast(u[:, _FLIP_V] < 0.5, tf.float32) if aug.vertical_flip else zero,
        "channel_shift": sym(_CHANNEL, float(aug.channel_shift_range)),
        "brightness": zero + 1.0,
    }
    if aug.brightness_range is not None:
        b_low, b_high = aug.brightness_range
        params["brightness"] = b_low + (b_high - b_low) * u[:, _BRIGHT]
    return params


def affine_transforms(params, height, width):
    """Compose each image's parameters into one output-to-input matrix.

    The matrix is the legacy ``rotation @ shift @ shear @ zoom`` about the
    image centre, followed by the flips, in ``(x=column, y=row)`` pixel
    coordinates.

    Args:
        params: dict from :func:`random_affine_params`.
        height: int. Image height.
        width: int. Image width.

    Returns:
        A ``[batch, 8]`` float32 tensor in the layout of
        ``ImageProjectiveTransformV3`` (``a0 a1 a2 b0 b1 b2 c0 c1``).

    Example:

    >>> p = random_affine_params(Augmentation(horizontal_flip=True), 2, 4, 4, (0, 0))
    >>> affine_transforms(p, 4, 4).shape
    TensorShape([2, 8])
    """
    theta = params["theta"] * (math.pi / 180.0)
    shear = params["shear"] * (math.pi / 180.0)
    cos, sin = tf.cos(theta), tf.sin(theta)
    zx, zy, tx, ty = params["zx"], params["zy"], params["tx"], params["ty"]
    # rotation @ shift @ shear @ zoom, written out (each 2x3, last row 0 0 1).
    sh01, sh11 = -tf.sin(shear), tf.cos(shear)
    a00 = cos * zx
    a01 = (cos * sh01 - sin * sh11) * zy
    a10 = sin * zx
    a11 = (sin * sh01 + cos * sh11) * zy
    a02 = cos * tx - sin * ty
    a12 = sin * tx + cos * ty
    # About the centre: C @ A @ C^-1, with C a translation by (cx, cy).
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    a02 = a02 + cx - a00 * cx - a01 * cy
    a12 = a12 + cy - a10 * cx - a11 * cy
    # Flips happen after the affine resampling: input = A @ F @ output, where
    # F maps x to (width - 1 - x) and/or y to (height - 1 - y).
    fx = 1.0 - 2.0 * params["flip_h"]
    fy = 1.0 - 2.0 * params["flip_v"]
    ox = params["flip_h"] * (width - 1)
    oy = params["flip_v"] * (height - 1)
    a02 = a02 + a00 * ox + a01 * oy
    a12 = a12 + a10 * ox + a11 * oy
    a00, a10 = a00 * fx, a10 * fx
    a01, a11 = a01 * fy, a11 * fy
    zero = tf.zeros_like(a00)
    return tf.stack([a00, a01, a02, a10, a11, a12, zero, zero], axis=1)


def apply_affine(images, transforms, fill_mode="nearest", cval=0.0, interpolation="bilinear"):
    """Resample a batch of images with one output-to-input matrix per image.

    Args:
        images: float tensor ``[batch, height, width, channels]``.
        transforms: ``[batch, 8]`` float32 tensor from :func:`affine_transforms`.
        fill_mode: str. One of ``"constant"``, ``"nearest"``, ``"reflect"``,
            ``"wrap"``.
        cval: float. Fill value for ``"constant"``.
        interpolation: str. ``"bilinear"`` or ``"nearest"``.

    Returns:
        A float32 tensor with the shape of ``images``.

    Example:

    >>> identity = tf.constant([[1.0, 0, 0, 0, 1, 0, 0, 0]])
    >>> apply_affine(tf.ones((1, 4, 4, 1)), identity).shape
    TensorShape([1, 4, 4, 1])
    """
    images = tf.convert_to_tensor(images, tf.float32)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=tf.cast(transforms, tf.float32),
        output_shape=tf.shape(images)[1:3],
        fill_value=tf.constant(cval, tf.float32),
        interpolation=interpolation.upper(),
        fill_mode=fill_mode.upper(),
    )


def augment_images(images, aug, seed):
    """Randomly augment a batch ``[batch, height, width, channels]`` (values 0-255).

    Geometric transforms and flips are one resampling; then the channel shift
    and the brightness factor are applied, in the legacy order.

    Args:
        images: float tensor ``[batch, height, width, channels]``; height and
            width must be static.
        aug: :class:`Augmentation`.
        seed: shape ``[2]`` integer tensor or pair. Stateless random seed.

    Returns:
        A float32 tensor with the shape of ``images``.

    Example:

    >>> out = augment_images(tf.zeros((2, 8, 8, 3)), Augmentation(shear_range=10), (3, 4))
    >>> out.shape
    TensorShape([2, 8, 8, 3])
    """
    images = tf.convert_to_tensor(images, tf.float32)
    if aug.is_identity:
        return images
    params = random_affine_params(aug, tf.shape(images)[0], images.shape[1], images.shape[2],
                                  seed)
    return transform_images(images, params, aug, geometric=aug.is_geometric,
                            channel_shift=bool(aug.channel_shift_range),
                            brightness=aug.brightness_range is not None)


def transform_images(images, params, aug, geometric=True, channel_shift=True, brightness=True):
    """Apply drawn parameters (:func:`random_affine_params`) to a batch, in the legacy order.

    One resampling for the geometric transforms and flips (``aug`` gives the
    fill mode, fill value and interpolation), then the channel shift (clipped
    to each image's range) and the brightness factor (clipped to [0, 255]).

    Args:
        images: float tensor ``[batch, height, width, channels]`` (values 0-255),
            height and width static.
        params: dict of ``[batch]`` tensors, as :func:`random_affine_params` draws.
        aug: :class:`Augmentation`.
        geometric, channel_shift, brightness: bool. Which steps to apply.

    Returns:
        A float32 tensor with the shape of ``images``.

    Example:

    >>> p = random_affine_params(Augmentation(horizontal_flip=True), 1, 2, 2, (0, 0))
    >>> transform_images(tf.zeros((1, 2, 2, 1)), p, Augmentation()).shape
    TensorShape([1, 2, 2, 1])
    """
    images = tf.convert_to_tensor(images, tf.float32)
    if geometric:
        transforms = affine_transforms(params, images.shape[1], images.shape[2])
        images = apply_affine(images, transforms, aug.fill_mode, aug.cval, aug.interpolation)
    if channel_shift:
        low = tf.reduce_min(images, axis=[1, 2, 3], keepdims=True)
        high = tf.reduce_max(images, axis=[1, 2, 3], keepdims=True)
        shift = params["channel_shift"][:, None, None, None]
        images = tf.clip_by_value(images + shift, low, high)
    if brightness:
        images = tf.clip_by_value(images * params["brightness"][:, None, None, None], 0.0, 255.0)
    return images

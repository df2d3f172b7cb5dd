"""Precision policy and reproducibility, set before any model is built."""

from __future__ import annotations

import contextlib
import platform
import warnings

import keras
import tensorflow as tf

from fmkeras.errors import ConfigError

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


def _gpu_compute_capability():
    """The highest compute capability among visible NVIDIA GPUs, or ``None``."""
    best = None
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        capability = details.get("compute_capability")
        if capability and (best is None or capability > best):
            best = capability
    return best


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def _cpuinfo_field(name, cpuinfo):
    """The value of the first ``name`` line of a ``/proc/cpuinfo``-style file, or None."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_bf16_flags(cpuinfo="/proc/cpuinfo"):
    """The bfloat16 instruction sets this CPU advertises, as a tuple of flag names.

    ``avx512_bf16`` (bf16 dot products) and ``amx_bf16`` (bf16 matrix tiles)
    are the ones TensorFlow's oneDNN kernels use for ``mixed_bfloat16``;
    without either, bfloat16 math on a CPU is emulated and usually slower
    than float32. With AMX, bf16 halved the CIFAR-10 network's step time in
    fmkeras' benchmarks; with ``avx512_bf16`` alone it went either way (0.66x
    for a small CNN on an AMD EPYC, 1.6x on an Intel Xeon kept off AMX), so
    time it (``benchmarks/precision.py``) before relying on it. Read from Linux's
    ``/proc/cpuinfo``; an empty tuple where that file cannot be read
    (another OS), so callers fall back to float32.

    Args:
        cpuinfo: str. The file to read.

    Example:

    >>> set(cpu_bf16_flags()) <= set(BF16_CPU_FLAGS)
    True
    >>> cpu_bf16_flags("/no/such/file")
    ()
    """
    flags = set((_cpuinfo_field("flags", cpuinfo) or "").split())
    return tuple(flag for flag in BF16_CPU_FLAGS if flag in flags)


def bf16_emulated(cpuinfo="/proc/cpuinfo"):
    """Whether this x86 CPU lacks bfloat16 units, so ``mixed_bfloat16`` math is emulated.

    True only where ``cpuinfo`` has an x86 ``flags`` line without
    ``avx512_bf16`` or ``amx_bf16``; False where it has one of them, and
    where there is no such line to judge by (another OS, an ARM CPU).

    Args:
        cpuinfo: str. The file to read.

    Example:

    >>> bf16_emulated("/no/such/file")
    False
    """
    return _cpuinfo_field("flags", cpuinfo) is not None and not cpu_bf16_flags(cpuinfo)


def cpu_model(cpuinfo="/proc/cpuinfo"):
    """The CPU's model name, for reports: ``/proc/cpuinfo``'s, else ``platform.processor()``.

    Args:
        cpuinfo: str. The file to read.

    Example:

    >>> isinstance(cpu_model(), str) and cpu_model() != ""
    True
    """
    return (_cpuinfo_field("model name", cpuinfo) or platform.processor()
            or platform.machine() or "unknown CPU")


def resolve_precision(precision="auto"):
    """Turn a ``precision`` setting into a Keras dtype policy name.

    ``auto`` picks ``mixed_float16`` on an NVIDIA GPU of compute capability
    7.0 or more (Tensor Cores) and ``float32`` otherwise. ``mixed_float16`` is
    refused on a machine without a GPU, where float16 math is emulated and
    slow; use ``mixed_bfloat16`` there.

    Args:
        precision: str. One of ``auto``, ``float32``, ``mixed_float16``,
            ``mixed_bfloat16``.

    Returns:
        str. The policy name.

    Example:

    >>> resolve_precision("float32")
    'float32'
    """
    if precision not in PRECISIONS:
        raise ConfigError(
            f"Unknown precision. Expected one of {list(PRECISIONS)}. "
            f"Received: precision={precision!r}")
    capability = _gpu_compute_capability()
    if precision == "auto":
        return "mixed_float16" if capability and capability >= (7, 0) else "float32"
    if precision == "mixed_float16" and capability is None:
        raise ConfigError(
            "precision='mixed_float16' needs a GPU; float16 on a CPU is emulated and slow. "
            "Expected 'float32' or 'mixed_bfloat16' on this machine. "
            "Received: precision='mixed_float16'")
    return precision


def set_precision(precision="auto"):
    """Resolve ``precision`` and make it Keras' global dtype policy.

    Call this before building any model: layers read the global policy when
    they are created. Warns where ``mixed_bfloat16`` is asked for without a
    GPU on a CPU whose bfloat16 math is emulated (:func:`bf16_emulated`).

    Args:
        precision: str. See :func:`resolve_precision`.

    Returns:
        str. The policy now in force.

    Example:

    >>> set_precision("float32")
    'float32'
    """
    policy = resolve_precision(precision)
    if (policy == "mixed_bfloat16" and not tf.config.list_physical_devices("GPU")
            and bf16_emulated()):
        warnings.warn(
            "precision='mixed_bfloat16' on a CPU without bfloat16 units (no AVX512_BF16 or "
            "AMX_BF16 among its flags): bfloat16 math is emulated there, usually slower than "
            "float32. Expected 'float32' on this machine. Received: "
            "precision='mixed_bfloat16'", UserWarning)  # one place: shown once per process
    keras.mixed_precision.set_global_policy(policy)
    return policy


def set_seed(seed, deterministic=False):
    """Seed Python, NumPy and TensorFlow; optionally make TF ops deterministic.

    Args:
        seed: int. The seed.
        deterministic: bool. Also enable TensorFlow op determinism, so two
            runs on the same CPU give bitwise-identical weights (Keras
            compiles without XLA while it is on). ``False`` turns it back
            off if an earlier ``set_seed`` turned it on (a notebook running
            a deterministic run, then a fast one); determinism the caller
            enabled itself is left alone.

    Example:

    >>> set_seed(42, deterministic=True)
    >>> _determinism_enabled()
    True
    >>> set_seed(42)
    >>> _determinism_enabled()
    False
    """
    global _DETERMINISM_BY_US
    keras.utils.set_random_seed(int(seed))
    if deterministic:
        if not _determinism_enabled():
            tf.config.experimental.enable_op_determinism()
            _DETERMINISM_BY_US = True
    elif _DETERMINISM_BY_US:
        _disable_determinism()


_DETERMINISM_BY_US = False


def _determinism_enabled():
    from tensorflow.python.framework import config as tf_config
    return tf_config.is_op_determinism_enabled()


def _disable_determinism():
    global _DETERMINISM_BY_US
    # TensorFlow exports no switch back; this is the one its own tests use.
    from tensorflow.python.framework import config as tf_config
    tf_config.disable_op_determinism()
    _DETERMINISM_BY_US = False


@contextlib.contextmanager
def global_settings_kept():
    """Put Keras' dtype policy and TensorFlow op determinism back as they were.

    A task sets both for its run (:func:`set_precision`, :func:`set_seed`).
    Each task's ``run`` is wrapped in this, so a notebook that runs a
    ``mixed_bfloat16`` or ``deterministic`` task gets its own settings back
    afterwards, on success or error, instead of building its next models in
    the run's policy. The trained model keeps the policy it was built with.

    Example:

    >>> with global_settings_kept():
    ...     _ = set_precision("mixed_bfloat16")
    ...     set_seed(0, deterministic=True)
    >>> keras.mixed_precision.global_policy().name
    'float32'
    >>> _determinism_enabled()
    False
    """
    policy = keras.mixed_precision.global_policy()
    determinism = _determinism_enabled()
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(policy)
        if _determinism_enabled() and not determinism:
            _disable_determinism()

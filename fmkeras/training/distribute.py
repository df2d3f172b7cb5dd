"""Distribution strategies: choose one by name, and the rules that go with it.

fmkeras never writes its own distribution layer: this module picks a
``tf.distribute`` strategy from a config value and answers the questions a
task has once it runs under one (how large is the global batch, am I the
chief, where may I write, how is the input sharded, is XLA worth it).

Typical use, before any model is built::

    strategy = make_strategy(config.strategy)          # "auto" by default
    batch = global_batch_size(config.data.batch_size, strategy)
    run_dir = worker_dir(config.run_dir, strategy)     # temp dir unless chief
    train = distribute_dataset(train, strategy, file_based=True, num_files=n)
    with strategy.scope():
        model = build_model(...)
        model.compile(...)
    prepare_model(model, strategy)
    with worker_failure_guard():
        model.fit(train, ...)

A multi-worker run reads the standard ``TF_CONFIG`` environment variable::

    TF_CONFIG='{"cluster": {"worker": ["host0:12345", "host1:12345"]},
                "task": {"type": "worker", "index": 0}}'
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time
import warnings

import tensorflow as tf

from fmkeras.config import is_count
from fmkeras.errors import ConfigError, DataError, FmkerasError

STRATEGIES = ("auto", "none", "mirrored", "multi_worker", "tpu")

# Seconds a collective may wait for a peer before the run fails instead of hanging.
DEFAULT_COLLECTIVE_TIMEOUT = 60.0

# The process's MultiWorkerMirroredStrategy, ``((TF_CONFIG, timeout), strategy)``:
# TensorFlow starts its collective runtime once per process, and every new
# strategy numbers its collectives from 1 again, so a second one would reuse the
# first one's collective keys (a "Shape mismatch in the collective instance"
# error or a hung collective in the next task). Later tasks reuse the first.
_multi_worker = None


class WorkerLostError(FmkerasError):
    """Another worker of a multi-worker run stopped answering."""


def tf_config():
    """The parsed ``TF_CONFIG`` environment variable, ``{}`` when unset.

    Example:

    >>> os.environ.pop("TF_CONFIG", None) and None
    >>> tf_config()
    {}
    """
    raw = os.environ.get("TF_CONFIG", "")
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ConfigError(
            "TF_CONFIG is not valid JSON. Expected e.g. "
            '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", '
            f'"index": 0}}. Received: TF_CONFIG={raw!r} ({err})') from None
    if not isinstance(value, dict):
        raise ConfigError(f"Expected TF_CONFIG to be a JSON object. Received: {raw!r}")
    return value


def num_workers():
    """Hosts taking part in training according to ``TF_CONFIG`` (chief + workers).

    Read from the environment alone: nothing starts, and no peer is waited for.

    Example:

    >>> import os
    >>> num_workers() if "TF_CONFIG" not in os.environ else 1
    1
    """
    cluster = tf_config().get("cluster", {})
    return max(1, len(cluster.get("chief", [])) + len(cluster.get("worker", [])))


def make_strategy(name="auto", collective_timeout=DEFAULT_COLLECTIVE_TIMEOUT):
    """Create the ``tf.distribute.Strategy`` named by a config value.

    Call this first, before anything creates tensors or lists devices:
    ``multi_worker`` in particular must start its collective runtime before
    TensorFlow initialises.

    - ``auto``: ``multi_worker`` when ``TF_CONFIG`` names more than one
      host, ``MirroredStrategy`` when more than one GPU is visible, else the
      default (single-device) strategy.
    - ``none``: the default strategy, whatever the hardware.
    - ``mirrored``: ``MirroredStrategy`` over all local GPUs (or the CPU).
    - ``multi_worker``: ``MultiWorkerMirroredStrategy`` configured from
      ``TF_CONFIG``; collectives give up after ``collective_timeout`` seconds
      so a lost peer fails the run instead of hanging it. One per process:
      later calls (the next task in a notebook) return the same strategy.
    - ``tpu``: ``TPUStrategy`` on the TPU found by ``TPUClusterResolver``.

    Args:
        name: str. One of ``auto``, ``none``, ``mirrored``, ``multi_worker``, ``tpu``.
        collective_timeout: float or None. Seconds before a multi-worker
            collective fails (``None``: wait forever).

    Returns:
        tf.distribute.Strategy.

    Example:

    >>> make_strategy("none").num_replicas_in_sync
    1
    """
    if name not in STRATEGIES:
        raise ConfigError(f"Unknown strategy. Expected one of {list(STRATEGIES)}. "
                          f"Received: strategy={name!r}")
    if name == "auto":
        if num_workers() > 1:
            name = "multi_worker"
        elif len(tf.config.list_physical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            return tf.distribute.get_strategy()
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = _mirrored_devices()
        if devices is None:
            return tf.distribute.MirroredStrategy()
        # Logical CPUs: reduce on one device. The collective all-reduce fails on the
        # sparse (IndexedSlices) gradients of embeddings when replicas see different
        # numbers of distinct tokens.
        return tf.distribute.MirroredStrategy(
            devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
    if name == "multi_worker":
        return _multi_worker_strategy(collective_timeout)
    return _tpu_strategy()


def _onednn_enabled():
    """Whether TensorFlow runs its oneDNN kernels (``TF_ENABLE_ONEDNN_OPTS``, CPU)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:  # pragma: no cover - a TensorFlow without the switch
        return False
    return bool(_pywrap_util_port.IsMklEnabled())


def _mirrored_devices():
    """All GPUs; without GPUs, every logical CPU (``FMKERAS_CPU_REPLICAS`` makes N).

    ``FMKERAS_CPU_REPLICAS=2`` splits the CPU into two logical devices before
    TensorFlow starts, so a mirrored run can be tried (and tested) on a
    machine without GPUs.
    """
    if tf.config.list_physical_devices("GPU"):
        return None  # MirroredStrategy's own choice: every local GPU
    wanted = os.environ.get("FMKERAS_CPU_REPLICAS")
    if wanted:
        try:
            count = int(wanted)
        except ValueError:
            count = 0
        if count < 1:
            raise ConfigError("Expected FMKERAS_CPU_REPLICAS to be a positive integer. "
                              f"Received: {wanted!r}")
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * count)
        except RuntimeError:
            pass  # TensorFlow already started: keep the devices it has
        devices = tf.config.list_logical_devices("CPU")
        if len(devices) != count:
            warnings.warn(
                f"FMKERAS_CPU_REPLICAS={count} has no effect: TensorFlow had already set up "
                f"{len(devices)} CPU device(s) in this process, so the run uses "
                f"{len(devices)}. Set it before TensorFlow starts (a fresh process or kernel).",
                UserWarning, stacklevel=2)
        if count > 1 and _onednn_enabled():
            warnings.warn(
                f"FMKERAS_CPU_REPLICAS={count} with TensorFlow's oneDNN kernels on: replicas "
                "on logical CPUs can crash TensorFlow (segmentation faults on Intel CPUs with "
                "AVX-512). Expected TF_ENABLE_ONEDNN_OPTS=0 set before TensorFlow starts "
                "(python -m fmkeras.train sets it).", UserWarning, stacklevel=2)
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def _multi_worker_strategy(collective_timeout):
    config = tf_config()
    if "cluster" not in config or "task" not in config:
        raise ConfigError(
            "strategy=multi_worker needs TF_CONFIG with 'cluster' and 'task'. Expected e.g. "
            '{"cluster": {"worker": ["host0:port", "host1:port"]}, '
            f'"task": {{"type": "worker", "index": 0}}}}. Received: TF_CONFIG={config!r}')
    cluster, task = config["cluster"], config["task"]
    hosts = cluster.get(task.get("type")) if isinstance(cluster, dict) and isinstance(
        task, dict) else None
    index = task.get("index", 0) if isinstance(task, dict) else None
    if not isinstance(hosts, list) or not is_count(index) or index >= len(hosts):
        raise ConfigError(
            "TF_CONFIG's task must name one of its cluster's hosts. Expected task.type among "
            f"{sorted(cluster) if isinstance(cluster, dict) else '[]'} and task.index below "
            f"that job's host count. Received: task={task!r}")
    global _multi_worker
    key = (json.dumps(config, sort_keys=True), collective_timeout)
    if _multi_worker is not None:
        started, strategy = _multi_worker
        if started != key:
            raise ConfigError(
                "This process already runs a multi-worker strategy, and TensorFlow starts "
                "its collective runtime once per process. Expected the same TF_CONFIG and "
                f"collective timeout as the first: TF_CONFIG={started[0]}, timeout "
                f"{started[1]} s. Received: TF_CONFIG={key[0]}, timeout {key[1]} s. "
                "Start a new process (or restart the notebook's kernel) for another cluster.")
        return strategy
    options = tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=collective_timeout)
    with _stop_signals_end_the_wait():  # it waits here until every worker has joined
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    _multi_worker = (key, strategy)
    return strategy


@contextlib.contextmanager
def _stop_signals_end_the_wait():
    """Ctrl-C (SIGINT) ends the process at once while TensorFlow waits for its peers.

    Python runs signal handlers between bytecodes, and the wait for the other
    workers is one call into TensorFlow: Ctrl-C's ``KeyboardInterrupt`` would
    never be raised, and a worker whose peers never come could only be
    killed. Nothing has trained yet, so the default action (the process
    ends, exit status 130) loses nothing. SIGTERM gets the default action
    too until TensorFlow's coordination service starts and takes SIGTERM
    over as a preemption notice; from then until every worker has joined,
    SIGTERM does not end the process (a scheduler's SIGKILL after its grace
    period does). The handlers in force before are put back afterwards.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stops = (signal.SIGTERM, signal.SIGINT)
    saved = {sig: signal.signal(sig, signal.SIG_DFL) for sig in stops}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if handler is not None:  # None: set outside Python, cannot be put back
                signal.signal(sig, handler)


def _tpu_strategy():
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError, RuntimeError) as err:
        raise ConfigError(
            "strategy=tpu found no TPU. Expected a TPU VM or TPU_NAME pointing at one; "
            f"use strategy=auto elsewhere. Received: {type(err).__name__}: {err}") from None
    return tf.distribute.TPUStrategy(resolver)


def global_batch_size(per_replica, strategy=None):
    """The batch one optimizer step sees: ``per_replica`` times the replicas.

    Keras divides the summed loss by this global batch, so a run on N
    replicas with per-replica batch ``b`` takes the same steps as one device
    with batch ``N * b``.

    Args:
        per_replica: int. Examples per replica per step.
        strategy: tf.distribute.Strategy or None (the current strategy).

    Returns:
        int.

    Example:

    >>> global_batch_size(32, tf.distribute.get_strategy())
    32
    """
    if isinstance(per_replica, bool) or not isinstance(per_replica, int) or per_replica < 1:
        raise ConfigError(
            f"Expected a positive integer batch size per replica. Received: {per_replica!r}")
    strategy = strategy or tf.distribute.get_strategy()
    return per_replica * strategy.num_replicas_in_sync


def task_identity(strategy=None):
    """``(task_type, task_index)`` of this process, ``(None, None)`` outside a cluster.

    Read from the strategy's cluster resolver when it has one, else from
    ``TF_CONFIG``.

    Example:

    >>> os.environ.pop("TF_CONFIG", None) and None
    >>> task_identity()
    (None, None)
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is not None and getattr(resolver, "task_type", None):
        return resolver.task_type, resolver.task_id
    task = tf_config().get("task", {})
    if not task:
        return None, None
    return task.get("type"), int(task.get("index", 0))


def is_chief(strategy=None):
    """Whether this process writes the run's files (checkpoints, reports, exports).

    The chief is the ``chief`` task, or worker 0 when the cluster has no
    chief; a single-process run is always the chief.

    Args:
        strategy: tf.distribute.Strategy or None.

    Example:

    >>> os.environ.pop("TF_CONFIG", None) and None
    >>> is_chief()
    True
    """
    task_type, index = task_identity(strategy)
    if task_type is None:
        return True
    if task_type == "chief":
        return True
    has_chief = bool(tf_config().get("cluster", {}).get("chief"))
    return task_type == "worker" and index == 0 and not has_chief


def worker_dir(run_dir, strategy=None):
    """Where this process may write: ``run_dir`` on the chief, a temp folder elsewhere.

    Every worker of a multi-worker run must execute the same saving code
    (saving is collective), but only the chief's files are kept. A rerun of
    an interrupted run resumes on every worker from the same epoch: the
    other workers' folders start with a copy of the chief's
    ``run_dir/checkpoints`` (backups, finished-phase markers, best model),
    which they find when ``run_dir`` is on a filesystem all workers share.
    A temporary folder is removed when the process exits (it holds a full
    copy of every checkpoint and export, which no one reads again).

    Args:
        run_dir: str. The run directory.
        strategy: tf.distribute.Strategy or None.

    Returns:
        str. An existing folder.

    Example:

    >>> os.environ.pop("TF_CONFIG", None) and None
    >>> worker_dir("runs/a") == "runs/a"
    True
    """
    if is_chief(strategy):
        return run_dir
    task_type, index = task_identity(strategy)
    local = tempfile.mkdtemp(prefix=f"fmkeras-{task_type}{index}-")
    atexit.register(shutil.rmtree, local, ignore_errors=True)
    shared = os.path.join(run_dir, "checkpoints")
    if os.path.isdir(shared):
        shutil.copytree(shared, os.path.join(local, "checkpoints"),
                        ignore=shutil.ignore_patterns(".tmp-*", ".*.tmp"))
    return local


def distribute_dataset(dataset, strategy=None, file_based=True, num_files=None):
    """Set how ``dataset`` is sharded across workers (``auto_shard_policy``).

    File-based pipelines with at least as many files as workers get
    ``AUTO``: ``FILE`` sharding (each worker reads its own files) where the
    pipeline starts from a file reader (``TFRecordDataset``,
    ``TextLineDataset``), else ``DATA``. ``FILE`` alone would fail at the
    first step on pipelines that read files inside a ``map`` (fmkeras' image
    pipelines). Everything else gets ``DATA`` (every worker reads everything
    and keeps its share). Under ``FILE`` sharding, workers whose files hold
    different numbers of examples take different numbers of steps, and one
    that runs out trains on empty batches (NaN batch-norm statistics): repeat
    such a dataset and give ``fit`` a ``steps_per_epoch``, or shard by data
    as :meth:`Distribution.dataset` (what fmkeras' tasks use) does.
    The dataset is returned with the option set; ``model.fit`` distributes
    it under the strategy's scope.

    Args:
        dataset: tf.data.Dataset. Batched with the GLOBAL batch size.
        strategy: tf.distribute.Strategy or None. Used for its name only.
        file_based: bool. Whether the pipeline starts from a list of files.
        num_files: int or None. How many files; None trusts ``file_based``.

    Returns:
        tf.data.Dataset.

    Example:

    >>> ds = distribute_dataset(tf.data.Dataset.range(4).batch(2), file_based=False)
    >>> ds.options().experimental_distribute.auto_shard_policy.name
    'DATA'
    """
    del strategy  # the worker count comes from TF_CONFIG, the same for every strategy
    options = tf.data.Options()
    enough = num_files is None or num_files >= num_workers()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.AUTO if file_based and enough
        else tf.data.experimental.AutoShardPolicy.DATA)
    return dataset.with_options(options)


def prepare_model(model, strategy=None):
    """Make ``model.fit``/``evaluate`` work under strategies of several replicas.

    Keras 3 builds a model at the start of ``fit`` by calling
    ``strategy.reduce("MEAN", ...)`` on a whole first batch, which fails when
    that batch splits unevenly across replicas (7 examples on 2 replicas: 4
    and 3) and always under ``MultiWorkerMirroredStrategy``
    (keras-team/keras#20585); only shapes are needed, so this builds from the
    first replica's batch. Under ``MultiWorkerMirroredStrategy`` Keras also
    reduces the scalar logs of each step over axis 0; they are returned as
    length-1 vectors. A no-op for a strategy of one replica; call it after
    ``compile``.

    Args:
        model: keras.Model. Created under ``strategy.scope()``.
        strategy: tf.distribute.Strategy or None (the model's strategy).

    Returns:
        The same model.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> prepare_model(model) is model
    True
    """
    strategy = (strategy or getattr(model, "_distribute_strategy", None)
                or tf.distribute.get_strategy())
    if strategy.num_replicas_in_sync <= 1:
        return model
    build = model._maybe_symbolic_build

    def first_replica(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def maybe_symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(first_replica, next(batches))
                break
        return build(data_batch=data_batch)

    model._maybe_symbolic_build = maybe_symbolic_build
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return model

    def rank_one(step):
        # Keras reduces multi-worker step outputs with ``MEAN`` over axis 0,
        # which fails on the scalar logs; a length-1 vector means the same.
        def wrapped(data):
            return tf.nest.map_structure(
                lambda t: tf.reshape(t, [1]) if tf.is_tensor(t) and t.shape.rank == 0 else t,
                step(data))
        return wrapped

    model.train_step = rank_one(model.train_step)
    model.test_step = rank_one(model.test_step)
    return model


_PEER_ERRORS = (tf.errors.DeadlineExceededError, tf.errors.UnavailableError,
                tf.errors.CancelledError, tf.errors.AbortedError)


@contextlib.contextmanager
def worker_failure_guard():
    """Turn a lost peer's collective errors into one clear :class:`WorkerLostError`.

    Under ``multi_worker`` a dead worker makes the others' collectives fail
    after the communication timeout (or TensorFlow's health check); this
    names the cause instead of a long runtime traceback.

    Example:

    >>> with worker_failure_guard():
    ...     pass
    """
    try:
        yield
    except _PEER_ERRORS as err:
        task_type, index = task_identity()
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise WorkerLostError(
            f"Multi-worker training stopped: another worker stopped answering. Expected all "
            f"workers in TF_CONFIG to stay up. Received: {type(err).__name__} on "
            f"{task_type}:{index}: {first_line[:300]}") from None


_JIT_CHOICES = {}


def device_name():
    """A short name for the device training runs on (first GPU, else ``CPU``).

    Example:

    >>> isinstance(device_name(), str)
    True
    """
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return "GPU:" + details.get("device_name", gpus[0].name)
    return "CPU"


def seconds_per_step(model_builder, sample_batch, jit_compile=False,
                     loss="categorical_crossentropy", steps=5):
    """Seconds per ``train_on_batch`` step of a fresh model, after two warm-up steps.

    ``float("inf")`` where ``jit_compile`` is asked for but Keras compiles
    without XLA (a layer without XLA support, or TensorFlow op determinism).

    Args:
        model_builder: callable returning a fresh uncompiled ``keras.Model``;
            the global dtype policy in force when it is called applies.
        sample_batch: ``(x, y)`` arrays of one batch.
        jit_compile: bool. Compile with XLA.
        loss: loss for the timing compile (optimizer: plain SGD).
        steps: int. Timed steps.

    Example:

    >>> import keras, numpy as np
    >>> build = lambda: keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> seconds_per_step(build, (np.zeros((8, 4)), np.zeros((8, 2))), loss="mse", steps=2) > 0
    True
    """
    model = model_builder()
    with warnings.catch_warnings():
        # Keras warns and compiles without XLA where the model cannot use it
        # (a layer without XLA support, or TensorFlow op determinism enabled).
        warnings.simplefilter("ignore", UserWarning)
        model.compile(optimizer="sgd", loss=loss, jit_compile=jit_compile)
    if jit_compile and not model.jit_compile:
        return float("inf")
    x, y = sample_batch
    model.train_on_batch(x, y)  # trace and compile
    model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return (time.perf_counter() - start) / steps


def measure_jit_compile(model_builder, sample_batch, loss="categorical_crossentropy", steps=5):
    """Seconds per train step without and with XLA: ``{False: s, True: s}``.

    A model XLA cannot compile (or that Keras runs without XLA, as under
    TensorFlow op determinism) gets ``float("inf")`` for ``True``.

    Args:
        model_builder: callable returning a fresh uncompiled ``keras.Model``.
        sample_batch: ``(x, y)`` arrays of one batch.
        loss: loss for the timing compile.
        steps: int. Timed steps after two warm-up steps.

    Example:

    >>> import keras, numpy as np
    >>> build = lambda: keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> t = measure_jit_compile(build, (np.zeros((8, 4)), np.zeros((8, 2))), "mse", 2)
    >>> sorted(t)
    [False, True]
    """
    timings = {False: seconds_per_step(model_builder, sample_batch, False, loss, steps)}
    try:
        timings[True] = seconds_per_step(model_builder, sample_batch, True, loss, steps)
    except (tf.errors.OpError, ValueError, NotImplementedError):
        timings[True] = float("inf")
    return timings


def jit_compile_auto(model_builder, sample_batch, loss="categorical_crossentropy", steps=5,
                     key=None):
    """Resolve ``jit_compile: auto`` by timing a few steps with and without XLA.

    The faster of the two is chosen (ties go to no XLA, which compiles
    sooner), so ``auto`` is never the slower setting on the machine it was
    measured on. The choice is cached in memory per ``(model name, device)``.

    Args:
        model_builder: callable returning a fresh uncompiled ``keras.Model``
            (build a small version of the real model: same layers, tiny sizes).
        sample_batch: ``(x, y)`` of one batch.
        loss: loss for the timing compile.
        steps: int. Timed steps per setting.
        key: hashable or None. Cache key; default ``(model.name, device_name())``.

    Returns:
        bool. The ``jit_compile`` value to pass to ``model.compile``.

    Example:

    >>> import keras, numpy as np
    >>> build = lambda: keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)], name="t")
    >>> jit_compile_auto(build, (np.zeros((8, 4)), np.zeros((8, 2))), "mse", 2) in (True, False)
    True
    """
    if key is None:
        key = (model_builder().name, device_name())
    if key not in _JIT_CHOICES:
        timings = measure_jit_compile(model_builder, sample_batch, loss, steps)
        _JIT_CHOICES[key] = timings[True] < timings[False]
    return _JIT_CHOICES[key]


def without_small_batches(dataset, size):
    """``dataset`` without the batches of fewer than ``size`` examples.

    Example:

    >>> ds = tf.data.Dataset.range(9).batch(4)  # batches of 4, 4 and 1
    >>> [len(b) for b in without_small_batches(ds, 2).as_numpy_iterator()]
    [4, 4]
    """
    def large_enough(*batch):
        return tf.shape(tf.nest.flatten(batch)[0])[0] >= size

    return dataset.filter(large_enough)


def merge_small_batches(dataset, size, samples=None, batch_size=None):
    """``dataset`` with each batch of fewer than ``size`` examples joined to the one before.

    For evaluation and prediction under a strategy with ``size`` replicas,
    where no example may be dropped: a last, partial batch of fewer examples
    than replicas would give a replica an empty batch. On Intel CPUs with
    AVX-512, TensorFlow's oneDNN ``Conv2D`` returns an empty input unchanged
    (``[0, 16, 16, 3]`` where ``[0, 14, 14, 4]`` is due), so a batch-norm or
    dense layer after it fails, or the process aborts. A dataset whose first
    batch is already too small is returned with that batch as it is.

    Joining makes the number of batches unknown to Keras, which then warns
    that the input "ran out of data"; give ``samples`` and ``batch_size`` (the
    dataset's examples and batch) to declare it.

    Example:

    >>> ds = tf.data.Dataset.range(9).batch(4)  # batches of 4, 4 and 1
    >>> merged = merge_small_batches(ds, 2, samples=9, batch_size=4)
    >>> [len(b) for b in merged.as_numpy_iterator()], int(merged.cardinality())
    ([4, 5], 2)
    >>> [len(b) for b in merge_small_batches(ds, 1).as_numpy_iterator()]
    [4, 4, 1]
    """
    if size <= 1:
        return dataset
    spec = dataset.element_spec
    leaves = tf.nest.flatten(spec)
    if not all(isinstance(s, tf.TensorSpec) and s.shape.rank and s.shape[1:].is_fully_defined()
               for s in leaves):
        return dataset  # ragged or unknown example shapes: nothing to build an empty batch of
    empty = tf.nest.map_structure(lambda s: tf.zeros([0, *s.shape[1:]], s.dtype), spec)
    end = tf.data.Dataset.from_tensors((empty, True))
    marked = tf.data.Dataset.zip((dataset, tf.data.Dataset.from_tensors(False).repeat()))

    def step(state, element):
        (held, holding), (batch, last) = state, element
        small = tf.shape(tf.nest.flatten(batch)[0])[0] < size
        join = holding & (last | small)
        # Joined only when it is due (a batch's copy costs memory, not just time).
        out = tf.nest.map_structure(
            lambda a, b: tf.cond(join, lambda: tf.concat([a, b], 0), lambda: a), held, batch)
        keep = tf.nest.map_structure(lambda e, b: tf.cond(join, lambda: e, lambda: b),
                                     empty, batch)
        return (keep, ~join | ~holding), (out, holding)

    def ready(batch, is_ready):
        return is_ready

    def batch_only(batch, is_ready):
        return batch

    merged = marked.concatenate(end).scan((empty, False), step).filter(ready).map(batch_only)
    if samples is not None and batch_size:
        batches = -(-samples // batch_size)
        last = samples - (batches - 1) * batch_size
        batches -= batches > 1 and last < size
        merged = merged.apply(tf.data.experimental.assert_cardinality(batches))
    return merged


def predict(model, x, batch_size=32):
    """``model.predict(x)`` in batches of ``batch_size``, without giving a replica of
    the model's strategy an empty batch (see :func:`merge_small_batches`).

    Example:

    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> predict(model, np.zeros((5, 3)), batch_size=2).shape
    (5, 2)
    """
    strategy = getattr(model, "_distribute_strategy", None)
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    if replicas <= 1:
        return model.predict(x, batch_size=batch_size, verbose=0)
    data = tf.data.Dataset.from_tensor_slices(x).batch(batch_size)
    merged = merge_small_batches(data, replicas, len(x), batch_size)
    return model.predict(merged, verbose=0)


def build_before_fit(model, data):
    """Create a compiled model's optimizer, loss and metric variables before ``fit``.

    Under a strategy Keras creates them first, from the data's shapes. For a
    model created outside any strategy scope it defers that to the first
    trace of the train step; TensorFlow then traces the whole step a second
    time, without variable creation, so the first step waits for two traces
    (a small Transformer: 11 s before the first step instead of 6 s on 2 CPU
    cores). This builds them up front from ``data.element_spec`` (no batch is
    read). Models with their own ``train_step`` (``GAN``, ``SimCLR``), data
    other than a ``tf.data.Dataset`` and models already built are left to
    Keras.

    Args:
        model: a compiled ``keras.Model``.
        data: what ``fit`` gets as ``x``.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> model.compile("adam", "mse")
    >>> build_before_fit(model, tf.data.Dataset.from_tensors(([[1.0, 2.0, 3.0]], [[0.0, 1.0]])))
    >>> model.optimizer.built
    True
    """
    import keras

    if (getattr(model, "_distribute_strategy", None) is not None
            or type(model).train_step is not keras.Model.train_step
            or not isinstance(data, tf.data.Dataset)
            or not hasattr(model, "_symbolic_build")  # Keras' own (private) builder
            or (model.optimizer is not None and model.optimizer.built)):
        return
    try:
        model._symbolic_build(data_batch=data.element_spec)
    except Exception:  # noqa: BLE001 - Keras builds them while tracing, as it would anyway
        pass


# Public classes whose Python class has another name (TPUStrategyV2, ...).
_PUBLIC_STRATEGIES = ("MirroredStrategy", "MultiWorkerMirroredStrategy", "TPUStrategy",
                      "OneDeviceStrategy")


class Distribution:
    """What a task needs from its strategy, in one object.

    Create it first thing in a task (before any tensor exists), then build
    and compile models under :meth:`scope`, batch the data with
    :meth:`global_batch`, write files under :meth:`write_dir`, and train with
    :meth:`fit`.

    Args:
        name: str. A config ``strategy`` value (see :func:`make_strategy`).

    Example:

    >>> dist = Distribution("none")
    >>> dist.replicas, dist.global_batch(32), dist.chief
    (1, 32, True)
    """

    def __init__(self, name="auto"):
        self.name = name
        self.strategy = make_strategy(name)
        self.replicas = int(self.strategy.num_replicas_in_sync)
        self.workers = num_workers()
        self.chief = is_chief(self.strategy)

    def global_batch(self, per_replica):
        """The batch of one optimizer step (see :func:`global_batch_size`)."""
        return global_batch_size(per_replica, self.strategy)

    def scope(self):
        """The strategy scope: create models, optimizers and metrics under it."""
        return self.strategy.scope()

    def write_dir(self, run_dir):
        """``run_dir`` on the chief, a temporary folder on other workers."""
        return worker_dir(run_dir, self.strategy)

    def smallest_batch(self, min_batch=None):
        """The fewest examples :meth:`dataset` keeps in a training batch.

        ``min_batch`` (default 1), and at least one example per replica.

        Example:

        >>> Distribution("none").smallest_batch(), Distribution("none").smallest_batch(2)
        (1, 2)
        """
        return max(self.replicas, min_batch or 1)

    def steps_per_epoch(self, samples, per_replica, min_batch=None):
        """Training steps of one pass over ``samples`` in :meth:`dataset`'s batches.

        Every full global batch, and the last, partial one unless it has
        fewer examples than :meth:`smallest_batch` (:meth:`dataset` leaves
        that one out).

        Raises:
            DataError: not even one batch is kept (fewer ``samples`` than
                :meth:`smallest_batch`).

        Example:

        >>> Distribution("none").steps_per_epoch(10, 4)
        3
        >>> Distribution("none").steps_per_epoch(9, 4, min_batch=2)
        2
        """
        steps, left = divmod(samples, self.global_batch(per_replica))
        steps += left >= self.smallest_batch(min_batch)
        if not steps:
            raise DataError(
                f"Expected at least {self.smallest_batch(min_batch)} training examples for "
                f"one training batch on {self.replicas} replica(s). Received: {samples}")
        return steps

    def dataset(self, dataset, min_batch=None, steps=None):
        """The training ``dataset`` for this strategy: sharded by data across
        workers, and without batches too small to give every replica an example.

        Across workers every worker runs the whole pipeline and keeps its share
        of each global batch (``AutoShardPolicy.DATA``), so every worker takes
        the same number of steps. Sharded by file, a worker whose files hold
        fewer examples runs out first and then trains on empty batches, whose
        batch-norm statistics are NaN on every worker.

        A last, partial batch of fewer examples than replicas would leave a
        replica with an empty batch in the same way; such a batch is dropped,
        as is one of fewer than ``min_batch`` examples (contrastive learning
        needs 2 images on some replica: ``min_batch=replicas + 1``). Dropping
        makes the number of batches unknown to Keras (its progress bar has no
        end and the first epoch warns that the input "ran out of data"), so
        pass ``steps`` (:meth:`steps_per_epoch`) to declare it again for a
        finite dataset. A Python iterator is returned as it is (Keras wraps
        it itself).

        Example:

        >>> data = tf.data.Dataset.range(9).batch(4)  # batches of 4, 4 and 1
        >>> kept = Distribution("none").dataset(data, min_batch=2, steps=2)
        >>> int(kept.cardinality()), [len(b) for b in kept]
        (2, [4, 4])
        """
        if not isinstance(dataset, tf.data.Dataset):
            return dataset
        smallest = self.smallest_batch(min_batch)
        if smallest > 1:
            finite = int(dataset.cardinality()) >= 0
            dataset = without_small_batches(dataset, smallest)
            if finite and steps is not None:
                # A wrong count fails at the end of the first epoch, not silently.
                dataset = dataset.apply(tf.data.experimental.assert_cardinality(steps))
        if num_workers() <= 1:
            return dataset
        return distribute_dataset(dataset, self.strategy, file_based=False)

    def eval_dataset(self, dataset, samples=None, per_replica=None):
        """A validation or test ``dataset`` for this strategy: every example kept,
        and a last batch of fewer examples than replicas joined to the batch
        before it (:func:`merge_small_batches`), so no replica gets an empty
        batch. With ``samples`` and the ``per_replica`` batch size, the number
        of batches is declared for Keras. A Python iterator is returned as it is.

        Example:

        >>> data = tf.data.Dataset.range(9).batch(4)
        >>> [len(b) for b in Distribution("none").eval_dataset(data, 9, 4)]
        [4, 4, 1]
        """
        if not isinstance(dataset, tf.data.Dataset) or self.replicas <= 1:
            return dataset
        batch = self.global_batch(per_replica) if per_replica else None
        return merge_small_batches(dataset, self.replicas, samples, batch)

    def fit(self, model, *args, **kwargs):
        """``model.fit`` with the multi-worker fixes and a clear error for a lost worker."""
        if not getattr(model, "_fmkeras_distribution_ready", False):
            prepare_model(model, self.strategy)
            model._fmkeras_distribution_ready = True
        build_before_fit(model, args[0] if args else kwargs.get("x"))
        with worker_failure_guard():
            return model.fit(*args, **kwargs)

    def describe(self):
        """A dict for ``metrics.json``: the strategy's public ``tf.distribute`` name
        (``MultiWorkerMirroredStrategy``, not its class ``CollectiveAllReduceStrategy``)
        and the replicas.

        Example:

        >>> Distribution("none").describe()["replicas"]
        1
        """
        kind = type(self.strategy)
        name = next((n for n in _PUBLIC_STRATEGIES if getattr(tf.distribute, n) is kind),
                    kind.__name__)
        return {"strategy": name, "replicas": self.replicas}

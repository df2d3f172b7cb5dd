"""Distribution strategies on CPU: logical devices and localhost workers in subprocesses.

TensorFlow fixes its devices and collective runtime at start-up, so every
strategy run happens in a fresh Python process.
"""

import json
import os
import select
import subprocess
import sys
import textwrap
import time
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO, replicas_env, start_workers

from fmkeras import train as cli
from fmkeras.errors import ConfigError, DataError
from fmkeras.training import distribute

# One epoch of a tiny MLP on fixed arrays; weights saved to argv[2].
TRAIN = textwrap.dedent("""
    import sys, time
    import numpy as np
    import keras, tensorflow as tf
    keras.config.disable_traceback_filtering()
    from fmkeras import models
    from fmkeras.training import distribute

    def train(strategy, out, per_replica, sleep=0.0, epochs=1, hidden=(8,)):
        keras.utils.set_random_seed(0)
        rng = np.random.default_rng(0)
        x = rng.normal(size=(64, 6)).astype("float32")
        y = np.eye(3, dtype="float32")[rng.integers(0, 3, 64)]
        batch = distribute.global_batch_size(per_replica, strategy)
        ds = distribute.distribute_dataset(
            tf.data.Dataset.from_tensor_slices((x, y)).batch(batch), strategy, file_based=False)
        with strategy.scope():
            model = models.mlp((6,), hidden, 3)
            model.compile(optimizer=keras.optimizers.SGD(0.1),
                          loss="categorical_crossentropy", metrics=["accuracy"])
        distribute.prepare_model(model, strategy)
        keras.utils.set_random_seed(1)  # same initial weights everywhere
        model.set_weights([np.random.default_rng(i).normal(0, 0.3, w.shape).astype("float32")
                           for i, w in enumerate(model.get_weights())])
        def step(*args, **kwargs):
            print("STEP", flush=True)  # tells the test that training has started
            time.sleep(sleep)
        pause = keras.callbacks.LambdaCallback(on_batch_end=step)
        with distribute.worker_failure_guard():
            model.fit(ds, epochs=epochs, verbose=0, shuffle=False, callbacks=[pause])
        np.savez(out, *model.get_weights())
""")

MIRRORED = TRAIN + textwrap.dedent("""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    devices = ["/cpu:0", "/cpu:1"]
    train(tf.distribute.MirroredStrategy(devices), sys.argv[1] + "/mirrored.npz", 8)
    assert tf.distribute.MirroredStrategy(devices).num_replicas_in_sync == 2
    train(distribute.make_strategy("none"), sys.argv[1] + "/single.npz", 16)

    # Nine examples in global batches of 8: the last batch would leave one replica
    # empty, and an empty batch's batch-norm statistics are NaN. Distribution.dataset
    # drops that batch, from a finite dataset and from one that repeats without end.
    dist = distribute.Distribution("mirrored")
    x = np.random.default_rng(0).normal(size=(9, 4)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, x[:, :2])).batch(dist.global_batch(4))
    with dist.scope():
        bn = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4),
                               keras.layers.BatchNormalization(), keras.layers.Dense(2)])
        bn.compile("sgd", "mse")
    steps = dist.steps_per_epoch(9, 4)
    finite = dist.fit(bn, dist.dataset(data), epochs=2, verbose=0).history["loss"]
    endless = dist.fit(bn, dist.dataset(data.repeat()), epochs=2, steps_per_epoch=steps,
                       verbose=0).history["loss"]
    # A dataset smaller than one global batch: its first batch splits 2 / 1 over the
    # replicas, which Keras' own build at the start of fit could not reduce.
    uneven = dist.fit(bn, dist.dataset(data.unbatch().take(3).batch(8)), epochs=1,
                      verbose=0).history["loss"]
    np.savez(sys.argv[1] + "/small_batches.npz", steps=steps, losses=finite + endless + uneven,
             weights_finite=all(np.isfinite(w).all() for w in bn.get_weights()))

    # Keras' batch norm keeps the first replica's moving statistics: a batch of 8
    # whose halves have means 0 and 10 leaves a moving mean of 0 (one device: 5).
    halves = np.repeat([[0.0], [10.0]], 4, axis=0).astype("float32")
    means = []
    for strategy in (dist.strategy, distribute.make_strategy("none")):
        with strategy.scope():
            norm = keras.Sequential([keras.Input((1,)),
                                     keras.layers.BatchNormalization(momentum=0.0),
                                     keras.layers.Dense(1)])
            norm.compile("sgd", "mse")
        norm.fit(tf.data.Dataset.from_tensor_slices((halves, halves)).batch(8), verbose=0)
        means.append(float(norm.layers[0].moving_mean.numpy()[0]))
    np.save(sys.argv[1] + "/moving_means.npy", means)
""")

WORKER = TRAIN + textwrap.dedent("""
    strategy = distribute.make_strategy("multi_worker", collective_timeout=float(sys.argv[3]))
    try:
        train(strategy, sys.argv[1], 8, sleep=float(sys.argv[2]), epochs=2)
    except distribute.WorkerLostError as err:
        print("WORKER LOST:", err, flush=True)
        sys.stdout.flush()
        import os
        os._exit(3)
    if sys.argv[4] != "once":
        # The next task in the same process: the same strategy, whose collectives go on
        # numbering where the first model's stopped (a new strategy would number them
        # from 1 again and collide with the first model's differently shaped ones).
        dist = distribute.Distribution("multi_worker")
        assert dist.strategy is strategy
        # TFRecord files of 13 and 3 examples (argv[4]), through Distribution.dataset:
        # sharded by file, worker 1 would run out first and train on empty batches,
        # whose batch-norm statistics are NaN; sharded by data, both take 4 steps.
        def parse(record):
            example = tf.io.parse_single_example(record, {
                "x": tf.io.FixedLenFeature([6], tf.float32),
                "y": tf.io.FixedLenFeature([3], tf.float32)})
            return example["x"], example["y"]
        files = [sys.argv[4] + "/a.tfrecord", sys.argv[4] + "/b.tfrecord"]
        data = (tf.data.TFRecordDataset(files).map(parse)  # 16 examples, as tfds declares
                .apply(tf.data.experimental.assert_cardinality(16)).batch(dist.global_batch(2)))
        with dist.scope():
            bn = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5),
                                   keras.layers.BatchNormalization(), keras.layers.Dense(3)])
            bn.compile(keras.optimizers.SGD(0.1), "categorical_crossentropy")
        steps = dist.steps_per_epoch(16, 2)
        history = dist.fit(bn, dist.dataset(data, steps=steps), epochs=2, verbose=0)
        finite = all(np.isfinite(w).all() for w in bn.get_weights())
        print("AGAIN STEPS", steps, "FINITE", finite, history.history["loss"], flush=True)
        # Batch-norm moving statistics stay per worker (Keras does not synchronize them).
        np.savez(sys.argv[1] + ".again.npz", *[w.numpy() for w in bn.trainable_weights])
    print("chief" if distribute.is_chief(strategy) else "not chief", flush=True)
""")


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    return env


def _workers(tmp_path, sleep, timeout, count=2, again=None):
    return start_workers(
        lambda i: [sys.executable, "-c", WORKER, str(tmp_path / f"w{i}.npz"), str(sleep),
                   str(timeout), str(again) if again else "once"],
        count, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _weights(path):
    with np.load(path) as data:
        return [data[k] for k in sorted(data.files, key=lambda k: int(k.split("_")[1]))]


def test_mirrored_two_cpus_matches_single_device_on_global_batch(tmp_path):
    subprocess.run([sys.executable, "-c", MIRRORED, str(tmp_path)],
                   env=replicas_env(**_env()), check=True, timeout=240)
    mirrored, single = _weights(tmp_path / "mirrored.npz"), _weights(tmp_path / "single.npz")
    assert len(mirrored) == len(single) == 4
    for a, b in zip(mirrored, single):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with np.load(tmp_path / "small_batches.npz") as small:
        assert int(small["steps"]) == 1  # the batch of 8; the batch of 1 is left out
        assert len(small["losses"]) == 5  # 2 + 2 epochs, then the uneven dataset's 1
        assert np.isfinite(small["losses"]).all() and bool(small["weights_finite"])
    np.testing.assert_allclose(np.load(tmp_path / "moving_means.npy"), [0.0, 5.0], atol=1e-5)


def _write_tfrecords(folder, counts):
    rng = np.random.default_rng(0)
    for name, count in counts.items():
        with tf.io.TFRecordWriter(str(folder / f"{name}.tfrecord")) as writer:
            for i in range(count):
                features = {"x": tf.train.Feature(float_list=tf.train.FloatList(
                                value=rng.normal(size=6).tolist())),
                            "y": tf.train.Feature(float_list=tf.train.FloatList(
                                value=np.eye(3)[i % 3].tolist()))}
                writer.write(tf.train.Example(features=tf.train.Features(
                    feature=features)).SerializeToString())


def test_multi_worker_localhost_agree(tmp_path):
    # Each worker trains two models in turn, as two tasks in one notebook would,
    # under the one strategy make_strategy keeps per process; the second reads
    # TFRecord files of uneven sizes through Distribution.dataset.
    _write_tfrecords(tmp_path, {"a": 13, "b": 3})
    procs = _workers(tmp_path, sleep=0.0, timeout=60, again=tmp_path)
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert "chief" in outputs[0].splitlines()[-1] and "not chief" in outputs[1], outputs
    for output in outputs:
        assert "AGAIN STEPS 4 FINITE True" in output and "ran out of data" not in output, output
    for name in ("w{}.npz", "w{}.npz.again.npz"):
        first, second = (_weights(tmp_path / name.format(i)) for i in range(2))
        assert len(first) == len(second) > 0
        for a, b in zip(first, second):
            np.testing.assert_allclose(a, b, rtol=1e-6)


def test_multi_worker_killed_peer_fails_fast(tmp_path):
    # 4 steps x 2 epochs with a 2 s pause per step: worker 1 is killed mid-run.
    procs = _workers(tmp_path, sleep=2.0, timeout=20)
    deadline = time.monotonic() + 180
    while True:  # wait until worker 1 is training, so the collectives are set up
        ready, _, _ = select.select([procs[1].stdout], [], [], max(0, deadline - time.monotonic()))
        line = procs[1].stdout.readline() if ready else ""
        if line.startswith("STEP") or not ready or not line:
            break
    assert line.startswith("STEP"), "worker 1 never started training"
    assert procs[0].poll() is None
    procs[1].kill()
    killed = time.monotonic()
    try:
        output = procs[0].communicate(timeout=120)[0]
    except subprocess.TimeoutExpired:
        procs[0].kill()
        pytest.fail("the surviving worker hung after its peer was killed")
    assert time.monotonic() - killed < 120
    assert procs[0].returncode == 3, output
    assert "WORKER LOST: Multi-worker training stopped" in output, output
    procs[1].communicate()


def test_a_worker_waiting_for_peers_that_never_come_ends_on_ctrl_c(tmp_path):
    # (SIGTERM is TensorFlow's own during that wait: its coordination service
    # takes it as a preemption notice.)
    import signal

    from conftest import free_ports

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0", "TF_CONFIG": json.dumps({
        "cluster": {"worker": [f"localhost:{port}" for port in free_ports(2)]},
        "task": {"type": "worker", "index": 0}})}
    proc = subprocess.Popen([sys.executable, "-m", "fmkeras.train", "--strategy", "multi_worker",
                             "--run-dir", str(tmp_path / "run")], cwd=REPO, env=env,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    deadline, line = time.monotonic() + 120, ""
    while "Waiting for 1/2 tasks to connect" not in line:  # TensorFlow's own log line
        ready, _, _ = select.select([proc.stderr], [], [], max(0, deadline - time.monotonic()))
        line = proc.stderr.readline() if ready else ""
        if not ready or not line:
            proc.kill()
            pytest.fail("the worker never started waiting for its peer")
    time.sleep(0.5)  # in the wait itself
    proc.send_signal(signal.SIGINT)
    try:
        proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("Ctrl-C did not end a worker waiting for its peer")
    assert proc.returncode == -signal.SIGINT
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("config, chief", [
    (None, True),
    ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}, True),
    ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}, False),
    ({"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "worker", "index": 0}},
     False),
    ({"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "chief", "index": 0}},
     True),
])
def test_is_chief_and_worker_dir(monkeypatch, tmp_path, config, chief):
    if config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    assert distribute.is_chief() is chief
    folder = distribute.worker_dir(str(tmp_path / "run"))
    assert (folder == str(tmp_path / "run")) is chief
    if not chief:
        assert os.path.isdir(folder) and not folder.startswith(str(tmp_path))
        os.rmdir(folder)


def test_global_batch_size_and_errors(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    strategy = distribute.make_strategy("none")
    assert distribute.global_batch_size(16, strategy) == 16
    with pytest.raises(ConfigError, match="Expected a positive integer.*Received: 0"):
        distribute.global_batch_size(0, strategy)
    with pytest.raises(ConfigError, match="Expected one of.*Received: strategy='gpus'"):
        distribute.make_strategy("gpus")
    with pytest.raises(ConfigError, match="needs TF_CONFIG"):
        distribute.make_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        distribute.is_chief()
    for task in ({"type": "worker", "index": 2}, {"type": "chief", "index": 0},
                 {"type": "worker", "index": "0"}):
        monkeypatch.setenv("TF_CONFIG", json.dumps(
            {"cluster": {"worker": ["a:1", "b:1"]}, "task": task}))
        with pytest.raises(ConfigError, match=r"task must name one of its cluster's hosts. "
                                              r"Expected task.type among \['worker'\]"):
            distribute.make_strategy("multi_worker")


def test_a_second_cluster_in_one_process_is_refused(monkeypatch):
    cluster = {"worker": ["a:1", "b:1"]}
    first = {"cluster": cluster, "task": {"type": "worker", "index": 0}}
    started = object()  # stands in for the process's strategy (starting one needs peers)
    monkeypatch.setattr(distribute, "_multi_worker", (
        (json.dumps(first, sort_keys=True), distribute.DEFAULT_COLLECTIVE_TIMEOUT), started))
    monkeypatch.setenv("TF_CONFIG", json.dumps(first))
    assert distribute.make_strategy("multi_worker") is started
    assert distribute.make_strategy("auto") is started
    monkeypatch.setenv("TF_CONFIG", json.dumps({**first, "task": {"type": "worker", "index": 1}}))
    with pytest.raises(ConfigError, match=r"already runs a multi-worker strategy.*"
                                          r"Expected the same TF_CONFIG.*\"index\": 0.*"
                                          r"Received: TF_CONFIG=.*\"index\": 1"):
        distribute.make_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", json.dumps(first))
    with pytest.raises(ConfigError, match="timeout 60.0 s. Received: .*timeout 5.0 s"):
        distribute.make_strategy("multi_worker", collective_timeout=5.0)


def test_steps_per_epoch_counts_kept_batches_and_names_too_few_examples():
    dist = distribute.Distribution("none")
    assert dist.steps_per_epoch(9, 4) == 3 and dist.steps_per_epoch(9, 4, min_batch=2) == 2
    with pytest.raises(DataError, match=r"Expected at least 2 training examples for one "
                                        r"training batch on 1 replica\(s\). Received: 1"):
        dist.steps_per_epoch(1, 4, min_batch=2)
    # A dataset of 9 in batches of 4 keeps 2, and says so (Keras sees the epoch's length).
    kept = dist.dataset(tf.data.Dataset.range(9).batch(4), min_batch=2, steps=2)
    assert int(kept.cardinality()) == 2 and [len(b) for b in kept] == [4, 4]


def batch_sizes(dataset):
    return [len(tf.nest.flatten(b)[0]) for b in dataset]


@pytest.mark.parametrize("samples,batch,replicas,expected", [
    (9, 4, 2, [4, 5]),      # a last batch of 1 joins the one before
    (8, 4, 2, [4, 4]),      # nothing to join
    (11, 4, 4, [4, 7]),     # 3 examples for 4 replicas
    (10, 4, 2, [4, 4, 2]),  # 2 is enough for 2 replicas
    (1, 4, 2, [1]),         # a first batch too small stays as it is
    (0, 4, 2, []),
])
def test_evaluation_batches_never_leave_a_replica_empty(samples, batch, replicas, expected):
    features = np.arange(samples * 3, dtype="float32").reshape(samples, 3)
    data = tf.data.Dataset.from_tensor_slices((features, np.arange(samples))).batch(batch)
    merged = distribute.merge_small_batches(data, replicas, samples, batch)
    assert batch_sizes(merged) == expected
    assert int(merged.cardinality()) == len(expected)  # Keras knows the count
    # Every example, once, in order, features still with their labels.
    rows = [(x.numpy(), y.numpy()) for x, y in merged]
    np.testing.assert_array_equal(np.concatenate([y for _, y in rows] or [[]]),
                                  np.arange(samples))
    if samples:
        np.testing.assert_array_equal(np.concatenate([x for x, _ in rows]), features)
    # Dicts (text models) are joined leaf by leaf; one replica changes nothing.
    named = tf.data.Dataset.from_tensor_slices({"ids": np.arange(9), "text": ["a"] * 9})
    assert batch_sizes(distribute.merge_small_batches(named.batch(4), 2)) == [4, 5]
    assert batch_sizes(distribute.Distribution("none").eval_dataset(data, samples, batch)) == \
        batch_sizes(data)


def test_predict_matches_keras_predict():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    x = np.random.default_rng(0).normal(size=(9, 3)).astype("float32")
    np.testing.assert_allclose(distribute.predict(model, x, 4),
                               model.predict(x, batch_size=4, verbose=0))


def test_cpu_replicas_asked_for_after_tensorflow_started_are_named(monkeypatch):
    """In a notebook TensorFlow has started before the run: the request cannot apply."""
    tf.constant(0)  # TensorFlow's devices are set up
    have = len(tf.config.list_logical_devices("CPU"))
    monkeypatch.setenv("FMKERAS_CPU_REPLICAS", str(have + 1))
    monkeypatch.setattr(distribute, "_onednn_enabled", lambda: False)
    with pytest.warns(UserWarning, match=f"FMKERAS_CPU_REPLICAS={have + 1} has no effect: "
                                         f"TensorFlow had already set up {have} CPU"):
        strategy = distribute.make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == have
    # With oneDNN on, logical CPU replicas can crash TensorFlow: the fix is named.
    monkeypatch.setattr(distribute, "_onednn_enabled", lambda: True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        distribute.make_strategy("mirrored")
    assert any(f"FMKERAS_CPU_REPLICAS={have + 1} with TensorFlow's oneDNN kernels on" in
               str(w.message) and "Expected TF_ENABLE_ONEDNN_OPTS=0" in str(w.message)
               for w in caught), [str(w.message) for w in caught]


def test_the_cli_turns_onednn_off_for_logical_cpu_replicas():
    env = {"FMKERAS_CPU_REPLICAS": "2"}
    cli.cpu_replicas_without_onednn(env)
    assert env["TF_ENABLE_ONEDNN_OPTS"] == "0"
    chosen = {"FMKERAS_CPU_REPLICAS": "2", "TF_ENABLE_ONEDNN_OPTS": "1"}
    cli.cpu_replicas_without_onednn(chosen)
    assert chosen["TF_ENABLE_ONEDNN_OPTS"] == "1"  # the user's choice stands
    for untouched in ({}, {"FMKERAS_CPU_REPLICAS": "1"}, {"FMKERAS_CPU_REPLICAS": "two"}):
        cli.cpu_replicas_without_onednn(untouched)
        assert "TF_ENABLE_ONEDNN_OPTS" not in untouched


def test_shard_policy(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps(
        {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}))
    ds = tf.data.Dataset.range(4)
    policy = lambda d: d.options().experimental_distribute.auto_shard_policy  # noqa: E731
    auto = tf.data.experimental.AutoShardPolicy
    assert policy(distribute.distribute_dataset(ds, file_based=True, num_files=8)) == auto.AUTO
    assert policy(distribute.distribute_dataset(ds, file_based=True, num_files=1)) == auto.DATA
    assert policy(distribute.distribute_dataset(ds, file_based=False)) == auto.DATA


def test_jit_compile_auto_picks_the_faster(monkeypatch):
    times = {False: 2.0, True: 1.0}
    monkeypatch.setattr(distribute, "measure_jit_compile", lambda *a, **k: dict(times))
    assert distribute.jit_compile_auto(None, None, key="m1") is True
    times.update({False: 1.0, True: 2.0})
    assert distribute.jit_compile_auto(None, None, key="m1") is True  # cached
    assert distribute.jit_compile_auto(None, None, key="m2") is False


def test_jit_compile_auto_keeps_xla_off_under_op_determinism():
    # Keras compiles without XLA when op determinism is on: timing that as "XLA"
    # would compare two identical settings.
    from tensorflow.python.framework import config as tf_config

    build = lambda: keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])  # noqa: E731
    batch = (np.zeros((8, 4)), np.zeros((8, 2)))
    tf_config.enable_op_determinism()
    try:
        timings = distribute.measure_jit_compile(build, batch, "mse", 1)
        assert timings[True] == float("inf") and timings[False] < float("inf")
        assert distribute.jit_compile_auto(build, batch, "mse", 1, key="determinism") is False
    finally:
        tf_config.disable_op_determinism()
    assert distribute.measure_jit_compile(build, batch, "mse", 1)[True] < float("inf")


# The image-classification task on two localhost workers sharing a run directory.
# argv: data, run_dir, epochs, interrupt_at (-1: never). Prints the epochs it trained.
TASK_WORKER = textwrap.dedent("""
    import sys
    import keras
    from fmkeras import config as config_lib
    from fmkeras.tasks import image_classification as task

    class Interrupt(Exception):
        pass

    class Watch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == int(sys.argv[4]):
                raise Interrupt(f"interrupted before epoch {epoch}")
            print("EPOCH", epoch, flush=True)

    config = config_lib.load_config(task.ImageClassificationConfig, None, [
        f"data.path={sys.argv[1]}", f"run_dir={sys.argv[2]}", f"train.epochs={sys.argv[3]}",
        "strategy=multi_worker", "data.image_size=8", "data.color_mode=rgb",
        "data.batch_size=4", "data.validation_split=0", "data.test_split=0.25",
        "model.name=mlp", "model.hidden_units=[8]", "train.verbose=0",
        "jit_compile=false", "export.enabled=false"])
    try:
        result = task.run(config, callbacks=[Watch()])
    except Interrupt as err:
        print("STOPPED", err, flush=True)
        sys.exit(0)
    print("DONE", round(result.metrics["test_accuracy"], 6), flush=True)
""")


def _task_workers(data, run_dir, epochs, interrupt_at, tmp):
    procs = start_workers(
        lambda i: [sys.executable, "-c", TASK_WORKER, data, run_dir, str(epochs),
                   str(interrupt_at)],
        env={"TMPDIR": str(tmp)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    return [[line for line in out.splitlines() if line.startswith(("EPOCH", "STOPPED", "DONE"))]
            for out in outputs]


def test_multi_worker_run_resumes_on_every_worker_from_the_shared_run_dir(tmp_path):
    from conftest import write_image_folder

    data = write_image_folder(tmp_path / "images", per_class=8, size=(8, 8))
    run_dir = str(tmp_path / "run")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    first = _task_workers(data, run_dir, epochs=3, interrupt_at=2, tmp=tmp)
    assert first == [["EPOCH 0", "EPOCH 1", "STOPPED interrupted before epoch 2"]] * 2
    assert os.listdir(os.path.join(run_dir, "checkpoints", "backup"))
    # Worker 1 wrote into a temporary folder, removed when its process ended.
    assert not [name for name in os.listdir(tmp) if name.startswith("fmkeras-")]
    # Rerun: the chief reads its backup; the other worker must resume at the same
    # epoch (else the collectives of the two would not line up).
    second = _task_workers(data, run_dir, epochs=3, interrupt_at=-1, tmp=tmp)
    assert [lines[:-1] for lines in second] == [["EPOCH 2"]] * 2
    assert second[0][-1] == second[1][-1] and second[0][-1].startswith("DONE")
    with open(os.path.join(run_dir, "history.csv"), encoding="utf-8") as f:
        assert [row.split(",")[0] for row in f.read().split()[1:]] == ["0", "1", "2"]
    assert not [name for name in os.listdir(tmp) if name.startswith("fmkeras-")]

"""Distribution strategies on CPU: logical devices and localhost workers in subprocesses.

TensorFlow fixes its devices and collective runtime at start-up, so every
strategy run happens in a fresh Python process.
"""

import json
import os
import select
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

from fmkeras.errors import ConfigError
from fmkeras.training import distribute

# One epoch of a tiny MLP on fixed arrays; weights saved to argv[2].
TRAIN = textwrap.dedent("""
    import sys, time
    import numpy as np
    import keras, tensorflow as tf
    keras.config.disable_traceback_filtering()
    from fmkeras import models
    from fmkeras.training import distribute

    def train(strategy, out, per_replica, sleep=0.0, epochs=1):
        keras.utils.set_random_seed(0)
        rng = np.random.default_rng(0)
        x = rng.normal(size=(64, 6)).astype("float32")
        y = np.eye(3, dtype="float32")[rng.integers(0, 3, 64)]
        batch = distribute.global_batch_size(per_replica, strategy)
        ds = distribute.distribute_dataset(
            tf.data.Dataset.from_tensor_slices((x, y)).batch(batch), strategy, file_based=False)
        with strategy.scope():
            model = models.mlp((6,), (8,), 3)
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
    print("chief" if distribute.is_chief(strategy) else "not chief", flush=True)
""")


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _env(extra=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    env.update(extra or {})
    return env


def _workers(tmp_path, sleep, timeout, count=2):
    ports = _free_ports(count)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    procs = []
    for i in range(count):
        config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        procs.append(subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path / f"w{i}.npz"), str(sleep), str(timeout)],
            env=_env({"TF_CONFIG": config}), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True))
    return procs


def _weights(path):
    with np.load(path) as data:
        return [data[k] for k in sorted(data.files, key=lambda k: int(k.split("_")[1]))]


def test_mirrored_two_cpus_matches_single_device_on_global_batch(tmp_path):
    subprocess.run([sys.executable, "-c", MIRRORED, str(tmp_path)], env=_env(), check=True,
                   timeout=240)
    mirrored, single = _weights(tmp_path / "mirrored.npz"), _weights(tmp_path / "single.npz")
    assert len(mirrored) == len(single) == 4
    for a, b in zip(mirrored, single):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_multi_worker_localhost_agree(tmp_path):
    procs = _workers(tmp_path, sleep=0.0, timeout=60)
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert "chief" in outputs[0].splitlines()[-1] and "not chief" in outputs[1], outputs
    for a, b in zip(_weights(tmp_path / "w0.npz"), _weights(tmp_path / "w1.npz")):
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


def test_shard_policy(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps(
        {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}))
    ds = tf.data.Dataset.range(4)
    policy = lambda d: d.options().experimental_distribute.auto_shard_policy  # noqa: E731
    auto = tf.data.experimental.AutoShardPolicy
    assert policy(distribute.distribute_dataset(ds, file_based=True, num_files=8)) == auto.FILE
    assert policy(distribute.distribute_dataset(ds, file_based=True, num_files=1)) == auto.DATA
    assert policy(distribute.distribute_dataset(ds, file_based=False)) == auto.DATA


def test_jit_compile_auto_picks_the_faster(monkeypatch):
    times = {False: 2.0, True: 1.0}
    monkeypatch.setattr(distribute, "measure_jit_compile", lambda *a, **k: dict(times))
    assert distribute.jit_compile_auto(None, None, key="m1") is True
    times.update({False: 1.0, True: 2.0})
    assert distribute.jit_compile_auto(None, None, key="m1") is True  # cached
    assert distribute.jit_compile_auto(None, None, key="m2") is False

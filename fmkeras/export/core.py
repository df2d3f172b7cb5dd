"""SavedModel writing and checking shared by every exporter.

Exports land in ``<export_root>/<name>/<version>/``, the layout TensorFlow
Serving watches. Each version is written to a temporary folder next to it and
renamed into place, so a failed export never leaves a half-written version.
Right after writing, :func:`check_export` reloads the SavedModel with plain
TensorFlow in a separate Python process that never imports fmkeras (started
at the first check and reused by later ones) and compares its outputs with
the in-memory model at two batch sizes.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import tensorflow as tf

from fmkeras.config import EXPORT_NAME
from fmkeras.errors import FmkerasError


class ExportError(FmkerasError):
    """An export could not be written or does not match the in-memory model."""


def check_class_names(model, class_names):
    """Raise :class:`ExportError` unless there is one class name per model output.

    Example:

    >>> from fmkeras.models import simple_cnn
    >>> check_class_names(simple_cnn((8, 8, 1), 2), ["a", "b"])
    """
    classes = model.output_shape[-1]
    if len(class_names) != classes:
        raise ExportError(f"Expected one class name per model output ({classes}). "
                          f"Received: {len(class_names)} class_names {list(class_names)!r}")


def next_version(model_dir):
    """The next free integer version under ``model_dir`` (1 when there is none).

    Example:

    >>> next_version("/nonexistent/fmkeras/model")
    1
    """
    if not os.path.isdir(model_dir):
        return 1
    versions = [int(d) for d in os.listdir(model_dir) if re.fullmatch(r"\d+", d)]
    return max(versions, default=0) + 1


def write_versioned(export_root, name, write_fn, version=None):
    """Write a SavedModel to ``export_root/name/version`` atomically.

    Args:
        export_root: str. Folder holding one folder per model name.
        name: str. Model name (a folder name, as TF Serving's ``model_name``).
        write_fn: callable taking a folder path and writing the SavedModel there.
        version: optional int. Defaults to the next free version.

    Returns:
        str. The path of the new version folder.

    Example:

    >>> root = tempfile.mkdtemp()
    >>> path = write_versioned(root, "m", lambda p: open(os.path.join(p, "x"), "w").close())
    >>> os.path.basename(path)
    '1'
    """
    if not isinstance(name, str) or not re.fullmatch(EXPORT_NAME, name):
        raise ExportError(f"Expected an export name of letters, digits, '_', '-' or '.' "
                          f"(not first). Received: {name!r}")
    model_dir = os.path.join(export_root, name)
    os.makedirs(model_dir, exist_ok=True)
    version = next_version(model_dir) if version is None else int(version)
    final = os.path.join(model_dir, str(version))
    if os.path.exists(final):
        raise ExportError(f"Export version already exists; refusing to overwrite {final!r}")
    # A dot-prefixed sibling: TF Serving ignores it, and rename is atomic on one filesystem.
    tmp = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=model_dir)
    try:
        write_fn(tmp)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


# Runs in another interpreter: plain TensorFlow only, fmkeras must not be importable.
# It serves one check per line of stdin (a JSON list: SavedModel path, cases
# file, results file) and answers each with one line starting with _REPLY.
_CHECK_SCRIPT = r"""
import sys
sys.path[:] = [p for p in sys.path if p not in ("", ".")]  # nothing from the working folder
import gc, json, traceback
import numpy as np
import tensorflow as tf


def check(path, inputs_file, out_file):
    loaded = tf.saved_model.load(path)
    with open(inputs_file) as f:
        cases = json.load(f)
    results = {}
    for case in cases:
        fn = loaded.signatures[case["signature"]]
        blob = np.load(case["file"])
        if case["kind"] == "bytes":
            data, ends = blob["data"].tobytes(), blob["ends"]
            starts = np.concatenate([[0], ends[:-1]])
            value = tf.constant([data[s:e] for s, e in zip(starts, ends)], tf.string)
        elif case["kind"] == "arrays":
            value = {k: tf.constant(blob[k]) for k in blob.files}
        else:
            value = tf.constant(blob["data"])
        outputs = fn(**value) if case["kind"] == "arrays" else fn(**{case["input"]: value})
        results[case["id"]] = {
            k: (np.char.decode(v.numpy().astype(bytes), "utf-8").tolist()
                if v.dtype == tf.string else v.numpy().tolist())
            for k, v in outputs.items()}
    assert "fmkeras" not in sys.modules, "the check must not import fmkeras"
    with open(out_file, "w") as f:
        json.dump(results, f)


for line in sys.stdin:
    try:
        check(*json.loads(line))
        reply = "ok"
    except Exception as e:
        reply = traceback.format_exception_only(e)[-1].strip()
    gc.collect()
    print(REPLY + json.dumps(reply), flush=True)
"""
_REPLY = "\x1efmkeras-check "


class _Checker:
    """One checking interpreter per process, started at the first check and reused.

    Starting TensorFlow takes most of a check (about 8 s of 9 on 2 CPU cores),
    so a notebook or a test run that exports several models starts it once.
    The interpreter never imports fmkeras; it ends when this process closes
    its stdin (at exit, or when it dies), and a check that times out or
    crashes it closes it, so the next check starts a new one.
    """

    def __init__(self):
        self.proc = None
        self.owner = os.getpid()
        self.lock = threading.Lock()

    def run(self, path, inputs_file, out_file, timeout):
        with self.lock:
            deadline = time.monotonic() + timeout
            if self.owner != os.getpid():  # a forked copy: the process is the parent's
                self.proc, self.owner = None, os.getpid()
            if self.proc is None or self.proc.poll() is not None:
                self._start()
            request = (json.dumps([path, inputs_file, out_file]) + "\n").encode()
            try:
                self._send(request)
            except OSError:  # it died since the last check
                self._start()
                self._send(request)
            return self._reply(deadline, timeout)

    def _send(self, request):
        self.proc.stdin.write(request)
        self.proc.stdin.flush()

    def _start(self):
        self.close()
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "")
        self.stderr = tempfile.TemporaryFile()
        script = f"REPLY = {_REPLY!r}\n{_CHECK_SCRIPT}"
        self.proc = subprocess.Popen([sys.executable, "-c", script], cwd=tempfile.gettempdir(),
                                     env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr)
        self.buffer = b""

    def _reply(self, deadline, timeout):
        marker = _REPLY.encode()
        while True:
            head, sep, rest = self.buffer.partition(b"\n")
            if sep:
                self.buffer = rest
                if head.startswith(marker):
                    return json.loads(head[len(marker):].decode())
                continue  # something the SavedModel printed
            left = deadline - time.monotonic()
            ready = select.select([self.proc.stdout], [], [], max(left, 0))[0]
            if not ready:
                self.close()
                return f"no answer within {timeout} s"
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                self.stderr.seek(0)
                lines = self.stderr.read().decode(errors="replace").strip().splitlines()
                self.close()
                return f"the checking process ended: {(lines or ['(no output)'])[-1]}"
            self.buffer += chunk

    def close(self):
        """End the checking process (it exits when its stdin closes)."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        self.stderr.close()


_CHECKER = _Checker()
atexit.register(_CHECKER.close)


def check_tolerance(model):
    """Absolute tolerance of :func:`check_export` for ``model``'s float outputs.

    ``1e-5``; ``1e-2`` when some layer is quantized: the reloaded graph may
    round an activation the other way before quantizing it, which moves an
    output by a quantization step (about 1e-3 for int8 MobileNetV2).

    Example:

    >>> import keras
    >>> check_tolerance(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
    1e-05
    """
    quantized = any(getattr(layer, "quantization_mode", None) is not None
                    for layer in model._flatten_layers(include_self=False, recursive=True))
    return 1e-2 if quantized else 1e-5


def check_export(path, cases, timeout=300, atol=1e-5):
    """Reload ``path`` in a separate process (without fmkeras) and compare outputs.

    The checking process is started at the first check and reused by later
    ones; it never imports fmkeras.

    Args:
        path: str. SavedModel folder.
        cases: list of dicts with ``signature`` (name), ``input`` (argument
            name), ``value`` (a NumPy array, or a list of ``bytes`` for
            string inputs) and ``expected`` (dict of output name -> array).
            A signature with several numeric inputs takes ``inputs`` (dict
            of argument name -> array or scalar) instead of ``input`` and
            ``value``.
        timeout: int. Seconds to wait for the checking process.
        atol: float. Absolute tolerance on float outputs (relative: 1e-4);
            :func:`check_tolerance` gives it for a model.

    Raises:
        ExportError: if the reloaded model fails, an output is not finite, or
            an output differs from ``expected``.

    Example:

    >>> # cases come from the exporters, e.g. export_image_classifier(check=True)
    """
    with tempfile.TemporaryDirectory(prefix="fmkeras-check-") as work:
        manifest = []
        for i, case in enumerate(cases):
            file = os.path.join(work, f"case{i}.npz")
            if "inputs" in case:  # several named inputs (arrays or scalars)
                np.savez(file, **{k: np.asarray(v) for k, v in case["inputs"].items()})
                kind = "arrays"
            elif isinstance(case["value"], (list, tuple)):
                data = [bytes(v) for v in case["value"]]
                np.savez(file, data=np.frombuffer(b"".join(data) or b"\0", np.uint8),
                         ends=np.cumsum([len(v) for v in data]).astype(np.int64))
                kind = "bytes"
            else:
                np.savez(file, data=np.asarray(case["value"]))
                kind = "array"
            manifest.append({"id": str(i), "signature": case["signature"],
                             "input": case.get("input"), "file": file, "kind": kind})
        inputs_file = os.path.join(work, "cases.json")
        out_file = os.path.join(work, "out.json")
        with open(inputs_file, "w") as f:
            json.dump(manifest, f)
        reply = _CHECKER.run(os.path.abspath(path), inputs_file, out_file, timeout)
        if reply != "ok":
            raise ExportError(f"Reloading the export {path!r} in a separate process failed: "
                              f"{reply}")
        with open(out_file) as f:
            results = json.load(f)
    for i, case in enumerate(cases):
        got = results[str(i)]
        for key, expected in case["expected"].items():
            if key not in got:
                raise ExportError(f"Export {path!r} signature {case['signature']!r} has no "
                                  f"output {key!r}; it returns {sorted(got)}")
            _compare(path, case["signature"], key, np.asarray(got[key]), np.asarray(expected),
                     atol)


def _compare(path, signature, key, got, expected, atol=1e-5):
    where = f"export {path!r}, signature {signature!r}, output {key!r}"
    if got.shape != expected.shape:
        raise ExportError(f"Shape mismatch in {where}: {got.shape} vs {expected.shape} in memory")
    if expected.dtype.kind in "fc":
        if not np.all(np.isfinite(got)):
            raise ExportError(f"Non-finite values in {where}")
        if not np.allclose(got, expected, rtol=1e-4, atol=atol):
            diff = float(np.max(np.abs(got - expected)))
            raise ExportError(f"Reloaded {where} differs from the in-memory model by {diff:.3g}")
    elif not np.array_equal(got.astype(str), expected.astype(str)):
        raise ExportError(f"Reloaded {where} differs from the in-memory model")


def numpy_outputs(outputs):
    """Eager signature outputs as NumPy arrays (strings decoded as UTF-8).

    Example:

    >>> numpy_outputs({"label": tf.constant([b"cat"])})["label"].tolist()
    ['cat']
    """
    return {k: (np.char.decode(v.numpy().astype(bytes), "utf-8") if v.dtype == tf.string
                else v.numpy())
            for k, v in outputs.items()}

"""Every task runs under MirroredStrategy over two logical CPUs (issue: scale out).

TensorFlow fixes its devices at start-up, so the tasks run in one fresh
process with ``FMKERAS_CPU_REPLICAS=2``; each writes ``metrics.json`` with
the strategy and replica count it trained with.
"""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import REPO, replicas_env, start_workers, write_image_folder

SCRIPT = textwrap.dedent("""
    import json, sys
    from fmkeras.train import load_task_config

    runs, strategy = json.loads(sys.argv[1]), sys.argv[2]
    results = {}
    for task, overrides in runs.items():
        module, config = load_task_config(task, overrides=overrides, strategy=strategy)
        results[task] = module.run(config).metrics
    print("RESULTS" + json.dumps(results, default=str))
""")


def task_runs(root):
    """Tiny data under ``root`` and each task's overrides (its run_dir under ``root``)."""
    images = write_image_folder(root / "imgs", classes=("a", "b"), per_class=8, size=(16, 16))
    # 9 test images in global batches of 8: the last batch gives one replica none. Batch
    # norm and oneDNN convolutions (Intel CPUs with AVX-512) failed on it in evaluation.
    split = root / "split"
    write_image_folder(split / "train", classes=("a", "b"), per_class=8, size=(16, 16))
    write_image_folder(split / "test", classes=("a", "b"), per_class=5, size=(16, 16), seed=1)
    (split / "test" / "b" / "img4.png").unlink()
    tsv = root / "texts.tsv"
    rows = ["text\tlabel"] + [f"{w} {w} uno dos\tes" for w in "abcdefghij"] + \
        [f"{w} {w} one two\ten" for w in "abcdefghij"]
    tsv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    pairs = root / "pairs.tsv"
    pairs.write_text("".join(f"go {w}\tve {w}\n" for w in "abcdefghijklmnopqrst"),
                     encoding="utf-8")
    quiet = ["train.verbose=0"]  # one export (image classification) is enough here
    runs = {
        "image-classification": [f"data.path={images}", "data.image_size=16",
                                 "data.batch_size=4", "train.epochs=2",
                                 "train.warmup_epochs=0", "model.filters=[4]",
                                 "model.dense_units=8", "export.check=false",
                                 "train.lookahead=true"],  # assigns across replicas
        "text-classification": [f"data.path={tsv}", "data.sequence_length=8",
                                "data.batch_size=4", "train.epochs=1", "model.d_model=8",
                                "model.num_heads=2", "model.ff_dim=8", "export.enabled=false"],
        "translation": [f"data.path={pairs}", "data.sequence_length=6", "data.batch_size=4",
                        "train.epochs=1", "model.d_model=8", "model.num_heads=2",
                        "model.ff_dim=8", "model.num_encoder_layers=1",
                        "model.num_decoder_layers=1", "decode.max_test_sentences=4",
                        "export.enabled=false"],
        "image-generation": [f"data.path={images}", "data.image_size=16", "data.batch_size=4",
                             "model.latent_dim=4", "model.base_filters=4", "train.epochs=1",
                             "evaluation.classifier_epochs=1", "evaluation.num_samples=4",
                             "export.enabled=false"],
        "pretrain-simclr": [f"data.path={images}", "data.image_size=16", "data.batch_size=4",
                            "model.backbone=cifar_resnet8", "model.alpha=null",
                            "train.epochs=1"],
        "pretrain-mlm": [f"data.path={tsv}", "data.sequence_length=8", "data.batch_size=4",
                         "model.d_model=8", "model.num_heads=2", "model.ff_dim=8",
                         "model.num_layers=1", "train.epochs=1"],
        "fine-tune": [f"data.path={split}", "data.image_size=16", "data.batch_size=4",
                      "model.backbone=cifar_resnet8", "model.alpha=null",
                      "train.head_epochs=1", "train.epochs=1",
                      "compression.prune_sparsity=0.5",
                      "train.unfreeze_layers=2", "export.enabled=false"],
    }
    return {task: [*overrides, *quiet, f"run_dir={root / task}"]
            for task, overrides in runs.items()}


@pytest.fixture(scope="module")
def mirrored_runs(tmp_path_factory):
    runs = task_runs(tmp_path_factory.mktemp("strategy"))
    env = replicas_env(FMKERAS_CPU_REPLICAS="2", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(runs), "mirrored"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The batches Distribution.dataset keeps are counted, so Keras knows each epoch's length.
    assert "ran out of data" not in proc.stderr, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULTS"))
    return json.loads(line[len("RESULTS"):])


def assert_trained_on_two_replicas(metrics, strategy):
    assert metrics["strategy"] == strategy, metrics
    assert metrics["replicas"] == 2, metrics
    numbers = [v for v in metrics.values() if isinstance(v, float)]
    assert numbers and all(np.isfinite(numbers)), metrics


TASKS = ["image-classification", "text-classification", "translation", "image-generation",
         "pretrain-simclr", "pretrain-mlm", "fine-tune"]


@pytest.mark.parametrize("task", TASKS)
def test_task_trains_under_mirrored_strategy_on_two_replicas(mirrored_runs, task):
    assert_trained_on_two_replicas(mirrored_runs[task], "MirroredStrategy")


def test_a_test_set_that_leaves_a_replica_empty_is_evaluated(mirrored_runs):
    metrics = mirrored_runs["fine-tune"]
    assert metrics["test_samples"] == 9  # global batches of 8 and 1 on two replicas
    assert metrics["test_accuracy"] * 9 == pytest.approx(round(metrics["test_accuracy"] * 9))


def test_pruning_under_mirrored_strategy_reaches_its_target(mirrored_runs):
    metrics = mirrored_runs["fine-tune"]
    assert metrics["pruned_layers"] >= 1
    assert metrics["pruned_sparsity"] == pytest.approx(0.5, abs=0.01)


@pytest.mark.slow
def test_every_task_trains_in_turn_on_two_localhost_workers(tmp_path):
    # MultiWorkerMirroredStrategy, one replica per worker process, with TF_CONFIG as a
    # user sets it. Both workers run the 7 tasks one after another, as a notebook
    # would: the tasks share the process's one strategy (a strategy per task reused
    # collective keys and failed in a later task). Slow (about 2.5 minutes), so it
    # runs with --runslow; tests/test_distribute.py covers the strategy itself.
    runs = task_runs(tmp_path)
    argv = [sys.executable, "-c", SCRIPT, json.dumps(runs), "multi_worker"]
    procs = start_workers(lambda i: argv, env={"PYTHONPATH": REPO}, cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    outputs = [proc.communicate(timeout=900) for proc in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
        assert "ran out of data" not in err, err[-3000:]  # the kept steps are declared
        line = next(x for x in out.splitlines() if x.startswith("RESULTS"))
        results = json.loads(line[len("RESULTS"):])
        assert sorted(results) == sorted(TASKS)
        for metrics in results.values():
            assert_trained_on_two_replicas(metrics, "MultiWorkerMirroredStrategy")
    # Only the chief (worker 0) wrote into the run directories.
    for task in TASKS:
        assert (tmp_path / task / "metrics.json").exists(), task

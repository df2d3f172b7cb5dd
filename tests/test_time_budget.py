"""``max_minutes`` / ``--max-minutes``: every task stops training at its time budget,
then evaluates, reports and exports as usual."""

import csv
import json
import os
import re
import subprocess
import sys

import pytest
from conftest import REPO, free_ports, write_image_folder
from test_strategy_tasks import TASKS, task_runs

from fmkeras import train
from fmkeras.tasks import base

# Three epochs each (fine-tuning: two per phase) under a budget the first batch spends.
LONGER = {"fine-tune": ["train.head_epochs=2", "train.epochs=2"]}
BUDGET = ["max_minutes=1e-6"]


def history_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def budget_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("budget")
    results = {}
    for task, overrides in task_runs(root).items():
        longer = LONGER.get(task, ["train.epochs=3"])
        module, config = train.load_task_config(task, overrides=[*overrides, *longer, *BUDGET])
        results[task] = (config.run_dir, module.run(config).metrics)
    return results


@pytest.mark.parametrize("task", TASKS)
def test_every_task_stops_at_its_time_budget_and_still_reports(budget_runs, task):
    run_dir, metrics = budget_runs[task]
    assert metrics["stopped_by_time_budget"] is True
    assert metrics["max_minutes"] == pytest.approx(1e-6)
    with open(f"{run_dir}/metrics.json") as handle:
        assert json.load(handle)["stopped_by_time_budget"] is True
    if task == "fine-tune":
        # One budget for the run: each phase trains one batch, ends its epoch and stops.
        for phase in (1, 2):
            assert len(history_rows(f"{run_dir}/history_phase{phase}.csv")) == 1
    else:
        assert len(history_rows(f"{run_dir}/history.csv")) == 1  # of 3 epochs


def test_cli_max_minutes_stops_training_and_says_so(capsys, tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=5)
    code = train.main(["image-classification", "--set", f"data.path={root}",
                       "--set", "data.image_size=8", "--set", "data.color_mode=rgb",
                       "--set", "train.epochs=4", "--set", "train.warmup_epochs=0",
                       "--set", "train.verbose=0", "--set", "export.enabled=false",
                       "--max-minutes", "1e-6", "--run-dir", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert code == 0
    assert "training stopped at the time budget (max_minutes: 1e-06)" in out
    assert len(history_rows(tmp_path / "run" / "history.csv")) == 1


def test_without_max_minutes_nothing_is_added():
    _, config = train.load_task_config("image-classification")
    assert config.max_minutes is None
    assert base.time_budget(config) is None
    assert base.budget_metrics(None) == {}


def test_max_minutes_is_refused_on_several_workers_before_any_of_them_starts(tmp_path):
    # Nobody listens on the peer's port: a worker that started its strategy would wait
    # for it; the check comes first, so the CLI answers at once. (A process of its own:
    # TensorFlow starts a collective runtime once per process.)
    ports = free_ports(2)
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CONFIG": json.dumps({
        "cluster": {"worker": [f"localhost:{port}" for port in ports]},
        "task": {"type": "worker", "index": 0}})}
    proc = subprocess.run(
        [sys.executable, "-m", "fmkeras.train", "translation", "--strategy", "multi_worker",
         "--max-minutes", "2.5", "--run-dir", str(tmp_path / "run")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == train.EXIT_USER_ERROR, proc.stderr[-2000:]
    assert re.search(r"error: max_minutes works on one machine .* Received: "
                     r"max_minutes=2.5 with 2 workers in TF_CONFIG", proc.stderr), proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["0", "-1", "soon", "true"])
def test_a_bad_max_minutes_is_one_line_naming_it(capsys, value):
    code = train.main(["--set", f"max_minutes={value}"])
    err = capsys.readouterr().err
    assert code == train.EXIT_USER_ERROR, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err
    assert "max_minutes" in lines[0], lines[0]


def test_a_bad_max_minutes_flag_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--max-minutes", "0"])
    assert exit_info.value.code == 2
    assert "--max-minutes: expected a float above 0, received '0'" in capsys.readouterr().err

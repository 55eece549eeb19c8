"""MLflow as its model-training users expect: the experiment tagged as model training (the
UI opens on the runs table), each trial's data set logged as a run input (the Dataset
column), each trial's system metrics (CPU %, resident memory; GPU through NVML where there
is one) at every reported epoch. The slow test runs a real sweep against a real `mlflow
server` and looks at it with headless Chromium; its screenshot is kept in tests/artifacts/.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from browser import chromium
from conftest import ROOT, MlflowServer, gansweep
from gansweep.config.schema import TrialConfig
from gansweep.service import sysmetrics
from gansweep.service.tracking import EXPERIMENT_KIND, MODEL_TRAINING_VIEW, Tracker
from gansweep.service.replicates import RunKey

ARTIFACTS = ROOT / "tests" / "artifacts"
MB = 1024 * 1024


# ---------------------------------------------------------------------------- system metrics


def test_cpu_percent_matches_the_process_cpu_time_over_the_interval() -> None:
    """The sampler's CPU % against an independent clock: os.times() over the same interval."""
    sampler = sysmetrics.SystemSampler()
    start_cpu, start_wall = sum(os.times()[:2]), time.monotonic()
    deadline = start_wall + 0.6
    total = 0
    while time.monotonic() < deadline:  # one core kept busy
        total += sum(range(1000))
    sample = sampler.sample()
    reference = 100 * (sum(os.times()[:2]) - start_cpu) / (time.monotonic() - start_wall)
    assert total > 0
    assert 0 <= sample[sysmetrics.CPU_PERCENT] <= 100 * psutil.cpu_count()
    # os.times() ticks at 10 ms, over 600 ms: within 5 points of each other
    assert sample[sysmetrics.CPU_PERCENT] == pytest.approx(reference, abs=5)


def test_resident_memory_grows_by_what_the_process_allocates() -> None:
    sampler = sysmetrics.SystemSampler()
    before = sampler.sample()[sysmetrics.MEMORY_MB]
    assert before == pytest.approx(psutil.Process().memory_info().rss / MB, rel=0.05)
    block = np.ones(256 * MB // 8)  # 256 MB of float64, every page written
    after = sampler.sample()[sysmetrics.MEMORY_MB]
    assert after - before == pytest.approx(256, abs=16)
    del block


def test_gpu_metrics_exactly_where_nvml_sees_a_gpu() -> None:
    cpu_only = sysmetrics.SystemSampler(cuda_index=None).sample()
    assert set(cpu_only) == {sysmetrics.CPU_PERCENT, sysmetrics.MEMORY_MB}
    on_gpu = sysmetrics.SystemSampler(cuda_index=0)
    sample = on_gpu.sample()
    gpu_keys = {sysmetrics.GPU_PERCENT, sysmetrics.GPU_MEMORY_MB, sysmetrics.GPU_PROCESS_MEMORY_MB}
    if sysmetrics._nvml_handle(0) is None:  # no NVML library or no GPU: no GPU metrics, no error
        assert not gpu_keys & set(sample)
    else:
        assert gpu_keys <= set(sample) and 0 <= sample[sysmetrics.GPU_PERCENT] <= 100
        assert 0 <= sample[sysmetrics.GPU_PROCESS_MEMORY_MB] <= sample[sysmetrics.GPU_MEMORY_MB]


# ---------------------------------------------------------------------------- the tracker


def test_the_experiment_is_model_training_and_each_run_logs_its_dataset(tmp_path: Path) -> None:
    points = tmp_path / "points.npy"
    np.save(points, np.random.default_rng(0).normal(size=(50, 2)))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "kinds", "kinds", tmp_path / "out")
    own = TrialConfig(dataset=str(points), seed=3, n_train=20).model_dump(mode="json")
    tracker.start_child(RunKey(0), "000 own", own)
    tracker.start_child(RunKey(1), "001 circle", TrialConfig(dataset="circle").model_dump(mode="json"))
    assert tracker.flush()
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("kinds")
    assert experiment.tags[EXPERIMENT_KIND] == "custom_model_development"
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    (own_input,) = runs["000 own"].inputs.dataset_inputs
    from gansweep.config.datafile import content_digest

    assert own_input.dataset.name == "points.npy" and own_input.dataset.source_type == "local"
    assert own_input.dataset.digest == content_digest(points)[:16]
    assert json.loads(own_input.dataset.source) == {"uri": points.as_uri()}
    assert {t.key: t.value for t in own_input.tags} == {"mlflow.data.context": "training"}
    params = runs["000 own"].data.params
    assert (params["data.n_train"], params["data.n_valid"], params["data.n_test"]) == ("20", "5", "5")
    assert params["data.split_seed"] == "3" and params["data.examples"] == "50"
    (circle_input,) = runs["001 circle"].inputs.dataset_inputs
    assert circle_input.dataset.name == "circle" and circle_input.dataset.source_type == "code"
    assert not any(k.startswith("data.") for k in runs["001 circle"].data.params)
    # A second driver on an experiment made before the tag existed: tagged then.
    client.delete_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND)
    Tracker(uri, "kinds", "kinds", tmp_path / "out").flush()
    assert client.get_experiment_by_name("kinds").tags[EXPERIMENT_KIND] == "custom_model_development"


# ---------------------------------------------------------------------------- a real sweep


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    running = MlflowServer(tmp_path_factory.mktemp("mlflow-view"))
    running.start()
    try:
        yield running
    finally:
        running.stop()


EPOCHS = 3


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, server: MlflowServer) -> Path:
    """Two trials, the circle and a file of points, 3 epochs each, into the server."""
    folder = tmp_path_factory.mktemp("view-sweep")
    np.save(folder / "points.npy", np.random.default_rng(0).normal(size=(400, 2)).astype(np.float32))
    study = {
        "name": "view", "trial": {
            "dataset": "circle", "g_hidden": [16], "d_hidden": [16], "noise_dim": 4, "batch_size": 32,
            "epochs": EPOCHS, "steps_per_epoch": 30, "eval_samples": 200, "eval_valid": 40,
            "eval_test": 200, "device": "cpu",
        },
        "search": {"dataset": ["circle", "points.npy"]},
        "sampler": {"name": "grid"}, "budget": {"max_concurrent": 2, "cpus_per_trial": 1},
    }
    (folder / "view.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    done = gansweep("run", "view.yaml", "--output", "out", "--tracking-uri", server.uri, cwd=folder)
    assert done.returncode == 0, done.stdout + done.stderr
    (folder / "stdout.txt").write_text(done.stdout)
    return folder


def bare_python_rss_mb() -> float:
    """The resident memory of a Python process that has imported nothing of ours."""
    code = "import psutil; print(psutil.Process().memory_info().rss)"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout) / MB


@pytest.mark.slow
def test_each_trial_has_system_metrics_at_every_epoch(sweep: Path, server: MlflowServer) -> None:
    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("view")
    trials = client.search_runs([experiment.experiment_id], "tags.`gansweep.trial` != ''")
    assert len(trials) == 2
    baseline, cores = bare_python_rss_mb(), psutil.cpu_count()
    for run in trials:
        cpu = client.get_metric_history(run.info.run_id, sysmetrics.CPU_PERCENT)
        memory = client.get_metric_history(run.info.run_id, sysmetrics.MEMORY_MB)
        assert sorted(m.step for m in cpu) == sorted(m.step for m in memory) == list(range(1, EPOCHS + 1))
        assert all(0 <= m.value <= 100 * cores for m in cpu)
        assert max(m.value for m in cpu) > 0  # training kept the worker busy
        # a worker holds torch, Ray and the data: far above a bare interpreter, below the machine
        assert all(baseline < m.value < psutil.virtual_memory().total / MB for m in memory)
        assert not client.get_metric_history(run.info.run_id, sysmetrics.GPU_PERCENT)  # CPU trials


@pytest.mark.slow
def test_the_mlflow_ui_opens_on_the_runs_table_with_params_metrics_and_datasets(
    sweep: Path, server: MlflowServer, tmp_path: Path
) -> None:
    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("view")
    assert experiment.tags[EXPERIMENT_KIND] == "custom_model_development"
    # The link `gansweep run` prints: the experiment in MLflow's model-training view.
    (link,) = [line.removeprefix("MLflow runs: ") for line in (sweep / "stdout.txt").read_text().splitlines()
               if line.startswith("MLflow runs: ")]
    assert link == (f"{server.uri}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"
                    f"&orderByKey={urllib.parse.quote('metrics.`parzen_ll`')}&orderByAsc=false")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "mlflow-ui-experiment.png"
    page = chromium(link, shot, tmp_path / "profile")
    print(f"screenshot: {shot}")
    (ARTIFACTS / "mlflow-ui-experiment.txt").write_text(page)
    assert "Runs" in page and "3 matching runs" in page and "Sort: parzen_ll" in page, page[:3000]
    assert "No data available for the selected time range" not in page  # not the GenAI overview
    trials = client.search_runs([experiment.experiment_id], "tags.`gansweep.trial` != ''")
    for run in trials:
        assert run.info.run_name in page, page[:4000]  # listed flat, each in its row
        (data,) = run.inputs.dataset_inputs
        assert f"{data.dataset.name} ({data.dataset.digest}) training" in page, page[:4000]
    # The table shows attribute columns until the user picks more: every param and metric
    # is one of the columns offered ("Show more columns (N total)").
    offered = int(re.search(r"Show more columns \((\d+) total\)", page).group(1))
    names = {key for run in trials for key in (*run.data.params, *run.data.metrics)}
    assert offered >= len(names), (offered, len(names))
    with Image.open(shot) as image:
        assert image.size == (1400, 900)
    # A trial's own page: its params, metrics and dataset filled in.
    own = next(run for run in trials if run.data.params["dataset"].endswith("points.npy"))
    run_shot = ARTIFACTS / "mlflow-ui-trial.png"
    run_page = chromium(f"{server.uri}/#/experiments/{experiment.experiment_id}/runs/{own.info.run_id}"
                        f"?{MODEL_TRAINING_VIEW}", run_shot, tmp_path / "profile-run")
    print(f"screenshot: {run_shot}")
    (ARTIFACTS / "mlflow-ui-trial.txt").write_text(run_page)
    assert "points.npy" in run_page and own.inputs.dataset_inputs[0].dataset.digest in run_page, run_page[:4000]
    for key in ("alpha", "batch_size", "data.n_train", "data.sha256"):
        assert key in run_page, (key, run_page[:4000])
    for key in ("parzen_ll", "d_loss", sysmetrics.CPU_PERCENT, sysmetrics.MEMORY_MB):
        assert key in run_page, (key, run_page[:4000])

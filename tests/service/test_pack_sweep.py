"""Packs in `gansweep run` (budget.pack_size): real CLI, real Ray, Optuna and MLflow stores.

Each member of a pack is an Optuna trial with its own MLflow run, checked by the same
consistency rules as one-trial sweeps; the numbers are checked against the pack library
(gansweep.engine.train.train_pack) run here on the same trials and data.
"""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
import torch
from conftest import gansweep, mlflow_runs
from mlflow.tracking import MlflowClient
from test_sweep import (
    check_consistent, children, kill_midway, optuna_reports, optuna_states, rerun_finishes_the_alpha_grid_once,
)

from gansweep.engine.data import load_dataset
from gansweep.engine.train import train_pack
from gansweep.service.search import values_from_params
from gansweep.config.schema import TrialConfig
from gansweep.config.load import load_study

PACKED_STUDY = """\
name: packed
trial: {dataset: circle, g_hidden: [32, 32], d_hidden: [32, 32], noise_dim: 2, alpha_mode: weight,
        loss: max_likelihood, batch_size: 64, epochs: 3, steps_per_epoch: 60, eval_every: 1,
        eval_samples: 400, eval_valid: 200, eval_test: 400, device: cpu}
search:
  lr_d: [0.001, 0.002, 1.0e+30]   # the third diverges in its first epoch, and leaves its pack
  alpha: [0.3, 0.7]
sampler: {name: grid, seed: 0}
budget: {max_concurrent: 2, pack_size: 3}
"""


def metric_history(client: MlflowClient, run_id: str, name: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)]


def test_a_packed_sweep_matches_the_pack_library_and_fails_only_the_diverging_member(tmp_path: Path) -> None:
    (tmp_path / "packed.yaml").write_text(PACKED_STUDY)
    done = gansweep("run", "packed.yaml", "--output", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    table = check_consistent(tmp_path / "out", uri, "packed", expected=6).set_index("trial")
    assert (table[table["lr_d"] == 1e30]["state"] == "FAIL").all()
    assert table[table["lr_d"] == 1e30]["failure_reason"].str.contains("diverged at epoch 1").all()
    assert (table[table["lr_d"] < 1]["state"] == "COMPLETE").all()

    study = optuna.load_study(study_name="packed", storage=f"sqlite:///{tmp_path / 'out' / 'optuna.db'}")
    packs = {tuple(t.user_attrs["unit"]) for t in study.trials}
    assert sorted(len(p) for p in packs) == [3, 3]  # two packs of three: 6 trials, 2 Tune trials
    config = load_study(tmp_path / "packed.yaml")
    client = MlflowClient(uri)
    run_of = {int(r.data.tags["gansweep.trial"]): r for r in children(mlflow_runs(uri, "packed"))}
    torch.set_num_threads(1)  # as the worker (budget.cpus_per_trial 1): the same kernels
    for pack in packs:
        trials = [TrialConfig.model_validate(values_from_params(config, study.trials[n].params)) for n in pack]
        data = load_dataset("circle", seed=trials[0].seed, device="cpu")
        reference = train_pack(trials, data)
        healthy = sum("diverged" not in history[-1] for history in reference)
        for number, history in zip(pack, reference, strict=True):
            run = run_of[number]
            if "diverged" in history[-1]:
                assert run.data.tags["gansweep.state"] == "FAIL" and len(history) == 1
                assert client.get_metric_history(run.info.run_id, "d_loss") == []
                continue
            # the diverged members left the step after epoch 1
            assert metric_history(client, run.info.run_id, "pack_size") == [3.0, healthy, healthy]
            for name in ("d_loss", "g_loss", "parzen_ll"):
                logged = metric_history(client, run.info.run_id, name)
                assert logged == pytest.approx([m[name] for m in history], rel=1e-5), (number, name)
            artifacts = {a.path for f in ("samples", "checkpoint", "plots") for a in client.list_artifacts(run.info.run_id, f)}
            assert {"samples/epoch_0003.png", "checkpoint/generator.pt", "plots/losses_vs_theory.png"} <= artifacts


COMPILED_PACKS_STUDY = """\
name: compiledpacks
trial: {dataset: circle, g_hidden: [8], d_hidden: [8], noise_dim: 2, alpha_mode: weight, compile: true,
        batch_size: 32, epochs: 2, steps_per_epoch: 20, eval_every: 1, eval_samples: 200, eval_valid: 100,
        eval_test: 200, device: cpu}
search:
  alpha: [0.2, 0.4, 0.6, 0.8]   # members of a pack differ in alpha (weight mode)
sampler: {name: grid, seed: 0}
budget: {max_concurrent: 2, pack_size: 2}
"""


def test_a_sweep_of_compiled_packs_gives_the_packed_losses(tmp_path: Path) -> None:
    """`compile: true` with budget.pack_size 2 through `gansweep run`: two compiled packs of
    two, every member COMPLETE with finite losses, at the eager pack's numbers (the library's
    packed execution here, rel 1e-3 as tests/engine/test_engine.py's compiled tolerance)."""
    (tmp_path / "compiled.yaml").write_text(COMPILED_PACKS_STUDY)
    done = gansweep("run", "compiled.yaml", "--output", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    table = check_consistent(tmp_path / "out", uri, "compiledpacks", expected=4).set_index("trial")
    assert (table["state"] == "COMPLETE").all()
    study = optuna.load_study(study_name="compiledpacks", storage=f"sqlite:///{tmp_path / 'out' / 'optuna.db'}")
    packs = {tuple(t.user_attrs["unit"]) for t in study.trials}
    assert sorted(len(p) for p in packs) == [2, 2]
    config = load_study(tmp_path / "compiled.yaml")
    client = MlflowClient(uri)
    run_of = {int(r.data.tags["gansweep.trial"]): r for r in children(mlflow_runs(uri, "compiledpacks"))}
    torch.set_num_threads(1)  # as the worker (budget.cpus_per_trial 1)
    for pack in packs:
        trials = [TrialConfig.model_validate(values_from_params(config, study.trials[n].params)) for n in pack]
        assert all(t.compile for t in trials) and len({t.alpha for t in trials}) == 2
        reference = train_pack(trials, load_dataset("circle", seed=trials[0].seed), execution="packed")
        for number, history in zip(pack, reference, strict=True):
            run_id = run_of[number].info.run_id
            assert metric_history(client, run_id, "pack_size") == [2.0, 2.0]
            assert len(metric_history(client, run_id, "compile_time")) >= 1  # the compiled step ran
            for name in ("d_loss", "g_loss", "d_real", "d_fake", "parzen_ll"):
                logged = metric_history(client, run_id, name)
                assert len(logged) == 2 and all(math.isfinite(v) for v in logged), (number, name, logged)
                bound = 1e-2 if name == "parzen_ll" else 1e-3
                assert logged == pytest.approx([m[name] for m in history], rel=bound, abs=1e-5), (number, name)


PRUNED_PACKS_STUDY = """\
name: prunepack
trial: {dataset: line, g_hidden: [64, 64], d_hidden: [64, 64], noise_dim: 2, alpha_mode: weight,
        epochs: 5, steps_per_epoch: 200, batch_size: 128, lr_d: 0.002, eval_samples: 1000,
        eval_valid: 300, eval_test: 500, device: cpu}
search:
  lr_g: [1.0e-7, 0.002]    # a generator that cannot learn, and one that can
  seed: [0, 1, 2, 3]
sampler: {name: grid, seed: 0}
pruner: {name: median, startup_trials: 2, warmup_epochs: 3}  # a learning G gets three epochs
budget: {max_concurrent: 1, pack_size: 2}
"""


def test_members_are_pruned_one_by_one_and_leave_their_pack(tmp_path: Path) -> None:
    """Four packs of two, one after the other, so that the median pruner has finished trials
    to compare with from the second pack on."""
    (tmp_path / "prunepack.yaml").write_text(PRUNED_PACKS_STUDY)
    done = gansweep("run", "prunepack.yaml", "--output", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    table = check_consistent(tmp_path / "out", uri, "prunepack", expected=8).set_index("trial")
    stopped = table[table["state"] == "PRUNED"]
    assert len(stopped) >= 2 and (stopped["epochs"] == stopped["pruned_at"]).all()
    assert (stopped["lr_g"] == 1e-7).sum() > (stopped["lr_g"] == 0.002).sum()
    study = optuna.load_study(study_name="prunepack", storage=f"sqlite:///{tmp_path / 'out' / 'optuna.db'}")
    client = MlflowClient(uri)
    run_of = {int(r.data.tags["gansweep.trial"]): r for r in children(mlflow_runs(uri, "prunepack"))}
    alone_after_pruning = 0
    for number, row in stopped.iterrows():
        run = run_of[number]
        at = int(row["pruned_at"])
        assert len(metric_history(client, run.info.run_id, "d_loss")) == at  # nothing logged after
        assert "checkpoint/generator.pt" in {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")}
        (mate,) = [n for n in study.trials[number].user_attrs["unit"] if n != number]
        if table.loc[mate, "state"] == "COMPLETE":
            # the mate trained on alone: the pruned member left the step, not just the records
            sizes = metric_history(client, run_of[mate].info.run_id, "pack_size")
            assert sizes[:at] == [2.0] * at and sizes[-1] == 1.0
            alone_after_pruning += 1
    assert alone_after_pruning >= 1


RESUME_PACKS_STUDY = """\
name: resumepack
trial: {dataset: circle, g_hidden: [32], d_hidden: [32], noise_dim: 2, alpha_mode: weight, epochs: 6,
        steps_per_epoch: 400, eval_samples: 300, eval_valid: 200, eval_test: 300, device: cpu}
search:
  alpha: [0.3, 0.4, 0.5, 0.6, 0.7]
sampler: {name: grid, seed: 1}
budget: {max_concurrent: 1, pack_size: 2}
"""


@pytest.mark.slow  # about a minute: two sweeps, the first killed midway
def test_packed_sweep_killed_then_rerun_finishes_exactly_once(tmp_path: Path) -> None:
    # kill once a pack has finished and the next has reported (and checkpointed) two epochs:
    # 2 x 6 evaluations of the first pack, 2 x 2 of the second
    db = kill_midway(tmp_path, RESUME_PACKS_STUDY,
                     lambda db: optuna_states(db).count("COMPLETE") >= 2 and optuna_reports(db) >= 16)
    states = optuna_states(db)
    assert states.count("RUNNING") >= 2 and len(states) < 5, states
    rerun_finishes_the_alpha_grid_once(tmp_path, "resumepack")
    study = optuna.load_study(study_name="resumepack", storage=f"sqlite:///{db}")
    resumed = [a for t in study.trials for a in t.user_attrs.get("attempts", []) if a["resumed_from"] > 0]
    assert resumed, "the interrupted pack restarted from scratch instead of its checkpoint"

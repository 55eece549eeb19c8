"""A trial's data set in MLflow's own terms: the run's dataset input (name, digest, source,
profile: what fills the runs table's Dataset column and its grouping) and, for a
researcher's own file, the params that record its splits. Torch-free: a file is described
by gansweep.config.datafile (cached, so a sweep hashes each file once).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mlflow.entities import Dataset as DatasetEntity
from mlflow.entities import DatasetInput, InputTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from gansweep.config import datafile
from gansweep.config.names import TOY_DATASETS

DIGEST_LENGTH = 16  # hex characters of sha256 shown as the digest (MLflow keeps up to 36)
DATA_PARAM_PREFIX = "data."


def _own_file(values: dict[str, Any]) -> datafile.DataFile | None:
    dataset = values.get("dataset")
    if not isinstance(dataset, str) or datafile.is_built_in(dataset):
        return None
    try:
        return datafile.inspect(dataset)
    except datafile.DataFileProblem:  # checked when the study was loaded; moved since
        return None


def data_params(values: dict[str, Any]) -> dict[str, Any]:
    """For a file: its digest, size, kind, shape and splits (drawn from the trial's seed) as
    params `data.*`, so that a run says which examples it trained and was scored on."""
    info = _own_file(values)
    if info is None:
        return {}
    splits = info.splits
    n_train = min(splits["train"], values.get("n_train") or splits["train"])
    return {
        f"{DATA_PARAM_PREFIX}{name}": value for name, value in {
            "sha256": info.digest, "examples": info.n, "kind": info.kind,
            "shape": "x".join(str(s) for s in info.shape), "split_seed": values.get("seed", 0),
            "split": "numpy default_rng(split_seed).permutation: valid, test, then train",
            "n_train": n_train, "n_valid": splits["valid"], "n_test": splits["test"],
        }.items()
    }


def dataset_input(values: dict[str, Any]) -> DatasetInput | None:
    """The trial's data set as an MLflow dataset input (context 'training'); None without a
    `dataset` value."""
    dataset = values.get("dataset")
    if not isinstance(dataset, str):
        return None
    info = _own_file(values)
    if info is not None:
        entity = DatasetEntity(
            name=Path(dataset).name, digest=info.digest[:DIGEST_LENGTH], source_type="local",
            source=json.dumps({"uri": Path(dataset).as_uri()}),
            profile=json.dumps({"num_examples": info.n, "kind": info.kind, "shape": list(info.shape),
                                "splits": info.splits}),
        )
    else:
        # A built-in set: the code generates or reads it; its digest names what decides its
        # examples (a toy set's points depend on the seed, an image set's splits are fixed).
        decides = {"dataset": dataset, "n_train": values.get("n_train"),
                   "seed": values.get("seed", 0) if dataset in TOY_DATASETS else None}
        digest = hashlib.sha256(json.dumps(decides, sort_keys=True).encode()).hexdigest()
        entity = DatasetEntity(
            name=dataset, digest=digest[:DIGEST_LENGTH], source_type="code",
            source=json.dumps({"tags": {"gansweep.dataset": dataset}}),
            profile=json.dumps({k: v for k, v in decides.items() if v is not None}),
        )
    return DatasetInput(dataset=entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")])

"""Which objectives a study's search may not change the evaluation of.

The sweep ranks, prunes and picks its best trial by the objective's values, so those values
must be comparable across its trials. A built-in metric's value depends, beside the model,
on evaluation fields: the rows it compares (eval_samples generated, eval_test real) and the
feature space (features). A FID of 500 samples is not comparable with one of 10,000 (its
bias alone, measured on the same two distributions: 6.02 and 0.17), nor a score in
Inception's features with one in the domain classifier's; `gansweep validate` refuses a study
whose search changes such a field under such an objective (config.rules.check_study).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gansweep.config.schema import StudyConfig

SIZES = ("eval_samples", "eval_test")
# kid is unbiased at any size (it depends on the features only); parzen_ll's kernel centres
# are the eval_samples (eval_test only picks which test rows average the same quantity);
# d_auc reads held-out valid rows and D, neither of them searched here.
OBJECTIVE_DEPENDS_ON: dict[str, tuple[str, ...]] = {
    "parzen_ll": ("eval_samples",),
    "fid": (*SIZES, "features"),
    "fid_infinity": ("eval_test", "features"),  # extrapolated in the generated rows only
    "kid": ("features",),
    "precision": (*SIZES, "features"),
    "recall": (*SIZES, "features"),
    "c2st_accuracy": (*SIZES, "features"),
    "energy_distance": (*SIZES, "features"),
}
WHAT_IT_CHANGES = {
    "eval_samples": "the number of generated samples it compares",
    "eval_test": "the number of real (test) samples it compares",
    "features": "the feature space it is computed in",
}


def incomparable_objective(study: StudyConfig) -> tuple[str, str] | None:
    """(the searched field, why) where the search changes what an objective's values depend
    on; None where every objective stays comparable across the study's trials."""
    objectives = [("objective", study.objective)]
    if study.objective.second is not None:
        objectives.append(("objective.second", study.objective.second))
    for where, spec in objectives:
        for field in OBJECTIVE_DEPENDS_ON.get(spec.metric, ()):
            if field in study.search:
                return field, (
                    f"{where}.metric={spec.metric!r} depends on {WHAT_IT_CHANGES[field]}, so trials with "
                    f"different {field} cannot be ranked, pruned or compared with each other; fix {field} "
                    "in trial: instead"
                )
    return None

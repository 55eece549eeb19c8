"""The study file, from YAML to a validated StudyConfig: all `gansweep validate` needs.

Torch-free, and importing nothing of the engine, the service or the reporting (tests/
test_layout.py holds it to that), so that validating a study and the sweep's driver stay light.

    names.py   the names a study may give each kind of variant (data sets, losses, samplers...)
    schema.py  the frozen pydantic models: TrialConfig, the search parameters, StudyConfig
    rules.py   the rules across fields: a trial's combinations, the sampler's needs, packs
    space.py   the search space: the one resolver of conditions, first values, Optuna's encoding
    load.py    the file: YAML (bounded), --set overrides, errors naming file:line, field and value
    theory.py  the equilibrium losses, plain arithmetic

Words: a *study file* is the YAML; a *StudyConfig* is what load.load_study makes of it; the
Optuna study that records a sweep's trials belongs to the service. A *TrialConfig* is the
values of one GAN training run, whatever runs it (an Optuna trial, a Tune trial, a pack member).
"""

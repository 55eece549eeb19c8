"""The driver: Ray Tune, Optuna and MLflow wired together, and the worker entry points."""

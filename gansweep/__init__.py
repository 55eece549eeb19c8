"""gansweep: hyperparameter sweeps for GAN research (Ray Tune, Optuna, MLflow).

`import gansweep` stays light: torch, Ray and MLflow are imported by the modules that use them.
"""

__version__ = "0.1.0"

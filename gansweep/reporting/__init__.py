"""A finished study, read back and shown: `gansweep report` and the report after a sweep.

    view.py      the study read back from its output folder, MLflow and the Optuna storage
    baseline.py  the data-as-model Parzen baselines (the only place that reaches the engine,
                 lazily, when a score is not cached)
    figures.py   which trials and points each figure shows; plots.py draws them (matplotlib)
    html.py      the page: write_report, report_after_sweep, log_report

It reads the config, and the service's protocol and tracking (MLflow's run names and tags);
the service never imports it: the CLI hands it in (tests/test_layout.py).
"""

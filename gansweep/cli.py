"""The `gansweep` command: run, train, validate, report, baseline.

The composition root: each command loads its study through gansweep.config and hands it to
the service (run), the engine through single.py (train, baseline) or the reporting (report);
`run` hands the service what it must not import itself, the report after a sweep and each
trial's figure (tests/test_layout.py). Every GansweepError becomes a message on stderr and
exit code 2, without a traceback. Heavy imports (torch, Ray, MLflow) happen inside the
commands that need them.
"""

from __future__ import annotations

import argparse
import errno
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from gansweep.errors import ConfigError, GansweepError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own usage errors: same exit code
        self.print_usage(sys.stderr)
        raise ConfigError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gansweep", description="Hyperparameter sweeps for GAN research.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def with_study(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("study", help="study file (YAML)")
        sub.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a field: alpha=0.3 fixes a trial field, budget.trials=4 any field",
        )
        return sub

    run = with_study("run", "Run a study's sweep on Ray Tune, tracked in MLflow.")
    run.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local)")
    run.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI)")
    run.add_argument("--output", help="output folder (default: the study's output)")
    run.add_argument("--allow-changed", action="store_true",
                     help="run a study whose search space or fixed trial fields changed since it last ran, "
                          "when its trials stay comparable (a wider range, more epochs)")

    train = with_study("train", "Train one trial of a study, with no services.")
    train.add_argument("--output", help="output folder (default: <study output>/train)")

    with_study("validate", "Check a study file and print its trial and search space.")

    report = commands.add_parser(
        "report", help="Write an HTML report of a study: figures, trials, importances."
    )
    report.add_argument(
        "output_dir", help="a study's output folder (or the name of its MLflow experiment)"
    )
    report.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)",
    )

    baseline = commands.add_parser(
        "baseline", help="Parzen score of real training data used as a model's samples."
    )
    baseline.add_argument("dataset")
    baseline.add_argument("--samples", type=int, default=10_000, help="kernel centres (N)")
    baseline.add_argument("--data-dir", help="folder holding the dataset")
    baseline.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    baseline.add_argument("--seed", type=int, default=0)
    baseline.add_argument("--features", default="domain", choices=("domain", "inception"),
                          help="feature space of the quality metrics on images")
    return parser


EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a tool killed by it


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a pipe's buffer written here, where a reader gone away is caught
        return code
    except GansweepError as err:
        print(f"gansweep: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # The reader went away (`gansweep validate study.yaml | head -1`): stop quietly, as
        # Python's docs advise, with stdout sent nowhere so that its flush at exit cannot fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        # A disk that filled up faster than the sweep's free-space floor could notice.
        print(f"gansweep: error: no space left on device: {err.filename or err}; free some "
              "space and run the same command again to resume", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("gansweep: interrupted", file=sys.stderr)
        return 130


def cmd_validate(args: argparse.Namespace) -> int:
    from gansweep.config.load import load_study
    from gansweep.config.space import trial_from_study

    study = load_study(args.study, args.overrides)
    trial = trial_from_study(study)
    print(f"{args.study}: valid study {study.name!r}")
    print(f"  trial: {trial.dataset}, {trial.architecture}, {trial.loss}, alpha={trial.alpha}")
    for name, param in study.search.items():
        print(f"  search {name}: {param.model_dump(exclude_none=True)}")
    for line in plugin_lines(study.plugins):
        print(line)
    return 0


def plugin_lines(paths: tuple[str, ...]) -> list[str]:
    """Each plugin file with its hash and the entries it registered, by kind."""
    from gansweep.config import plugins
    from gansweep.extend import REGISTRIES

    lines = []
    for plugin in plugins.files(paths):
        entries = [f"{kind} {name}" for kind, registry in REGISTRIES.items()
                   for name in registry.names(built_in=False) if registry.get(name).origin == plugin.path]
        lines.append(f"  plugin {plugin.path} (sha256 {plugin.sha256[:12]}): {', '.join(entries) or 'registers nothing'}")
    return lines


def cmd_train(args: argparse.Namespace) -> int:
    from gansweep.config.load import load_study
    from gansweep.config.space import trial_from_study
    from gansweep.single import train_one

    study = load_study(args.study, args.overrides)
    trial = trial_from_study(study)
    output = Path(args.output) if args.output else study.output_dir / "train"
    return train_one(trial, output, study.objective)


def cmd_run(args: argparse.Namespace) -> int:
    from gansweep.config.load import load_study

    study = load_study(args.study, args.overrides)
    from gansweep.service.driverlock import OutputLock

    # A study another driver runs in this output folder: refused before Ray starts (the sweep
    # takes the lock itself, and the lease of a shared Optuna storage).
    output = Path(args.output) if args.output else study.output_dir
    OutputLock(output.resolve()).refuse_if_held(study.name)
    from gansweep.service.raystart import EXIT_SIGTERM, RayStart

    # Ray's processes start while this process imports torch, Tune, MLflow and Optuna.
    ray_start = RayStart.begin(args.address)
    try:
        from gansweep.reporting.html import report_after_sweep
        from gansweep.reporting.plots import plot_losses_vs_theory
        from gansweep.service.sweep import run_study

        code = run_study(
            study,
            study_path=Path(args.study),
            address=args.address,
            tracking_uri=args.tracking_uri,
            output=Path(args.output) if args.output else None,
            allow_changed=args.allow_changed,
            ray_start=ray_start,
            after=report_after_sweep,
            figure=plot_losses_vs_theory,
        )
    except KeyboardInterrupt:
        if not ray_start.terminated:
            raise
        code = EXIT_SIGTERM
    finally:
        ray_start.stop()
    if ray_start.terminated:  # the sweep ended its trials and runs as for Ctrl-C
        print(f"gansweep: stopped by SIGTERM; resume with: {resume_command(args)}", file=sys.stderr)
        return EXIT_SIGTERM
    return code


def resume_command(args: argparse.Namespace) -> str:
    """The `gansweep run` command line that resumes this one's study (its identity stored,
    --allow-changed is not needed again)."""
    words = ["gansweep", "run", args.study, *(w for o in args.overrides for w in ("--set", o))]
    for flag, value in (("--address", args.address), ("--tracking-uri", args.tracking_uri), ("--output", args.output)):
        if value:
            words += [flag, value]
    return shlex.join(words)


def cmd_report(args: argparse.Namespace) -> int:
    from gansweep.reporting.html import write_report

    path = write_report(Path(args.output_dir), args.tracking_uri)
    print(f"report written to {path}")
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    from gansweep.single import print_baseline

    return print_baseline(args.dataset, args.samples, args.data_dir, args.device, args.seed, args.features)


COMMANDS = {
    "run": cmd_run,
    "train": cmd_train,
    "validate": cmd_validate,
    "report": cmd_report,
    "baseline": cmd_baseline,
}


if __name__ == "__main__":
    sys.exit(main())

"""The training engine: data -> networks + losses -> Algorithm 1's iteration -> evaluation.

torch only: never Ray, Optuna or MLflow. It takes validated trials, a data set and a report
callable. iteration.py defines the iteration once; executions.py runs it eager, packed,
compiled or compiled-packed; run.py is the epoch loop over a unit of one or more trials.
"""

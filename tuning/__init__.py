"""Optuna hyperparameter sweeps of training runs on the Ray cluster (``lstc sweep``).

:mod:`tuning.spec` (the sweep spec, validated against the recipe keys), :mod:`tuning.space`
(Optuna distributions over recipe keys), :mod:`tuning.storage` (study storage URLs),
:mod:`tuning.pruning` (the rank-0 pruning callback), :mod:`tuning.report` (the parent run's
table, best trial and plots) and :mod:`tuning.sweep` (the driver: ask/tell, trials in
parallel, resume, MLflow parent/children, registration of the best model).
"""

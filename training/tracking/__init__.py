"""MLflow, for every command that logs or reads experiments.

- `runs`: the tracking URI, run opening and closing, the rank-0 `MlflowLogger`, provenance and params;
- `lineage`: MLflow 3 datasets, a logged model per kept checkpoint, registration and `models:/` URIs;
- `preprocess_log`: the `preprocess --experiment` run (manifest, rejects summary, verify report);
- `eval_log`: an evaluation run, linked to the pretraining run and the checkpoint's logged model;
- `compare`: `avtime compare`, a table and plot of runs, their models and evaluations.
"""

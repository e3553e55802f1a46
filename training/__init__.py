"""avtime training: configs, the Ray Train loop, MLflow tracking, evaluation and the CLI."""

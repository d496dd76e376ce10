"""MLflow: experiment tracking, the model registry and the served model."""

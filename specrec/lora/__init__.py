"""Daily LoRA adapters on the FM: cycle data, training, holdout gate, registry, drift, base retraining."""

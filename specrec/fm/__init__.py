"""The foundation model's pipeline stages: train_fm and evaluate_fm (torch code lives in models/)."""

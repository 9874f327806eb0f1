"""Evaluation: metrics, evaluating a model or an ensemble on a labelled folder, model cards."""

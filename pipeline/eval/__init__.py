"""Evaluation: the evaluator (scene parser + domain CLIP), the metrics, sampling and evaluating a model."""

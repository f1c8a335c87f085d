"""Training: the generic loop over a batch stream, the SFT and distillation steps, the router,
and the evaluator's training."""

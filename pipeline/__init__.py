"""DanceOPD pipeline library, in layers; a module imports only from its own layer or those below.

- ``pipeline.data``   the ShapesEdit world, the frozen text encoder, shards, external ingest and
                      curation (everything ``curate`` needs; no model code)
- ``pipeline.core``   flow, fields, batches, backbone, the routed teacher, compute set-up and
                      checkpoint folders (the model stack)
- ``pipeline.eval``   the evaluator (the measuring instrument), the metrics, sampling and
                      evaluating a model
- ``pipeline.train``  the generic training loop and its step functions (SFT, distillation), the
                      router, and the evaluator's training

Beside them: ``config`` (the single validator of params.yaml), ``tracking`` (the only mlflow
import) and ``report`` (the results table). ``config`` imports only ``data.world``.
"""

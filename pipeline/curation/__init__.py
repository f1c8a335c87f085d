"""What makes the curated data: rendering and ingesting into shards (`curate`, `external`, `images`)
and the frozen text encoders `embed` runs (`text`, `sd3_text`). Only the `curate` and `embed` stages
(and the evaluator's text tower) read it, so a change here reruns no reader of the data."""

"""The data layer: ShapesEdit world, text encoder, webdataset shards, external edit ingest."""

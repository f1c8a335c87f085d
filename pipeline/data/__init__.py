"""The data formats every later stage reads: the ShapesEdit world, the webdataset shards and their
manifest, the embeddings store and the atomic outputs. What makes the data (curation, the user's
files, the text encoders) is `pipeline.curation`, which only `curate` and `embed` read."""

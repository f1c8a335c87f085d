"""The model stack: flow, fields, batches, backbone, the routed teacher, compute, checkpoints."""

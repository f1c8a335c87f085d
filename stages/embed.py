"""Stage `embed`: the frozen text encoder's embeddings of every prompt of the manifest (and of "")."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import config, tracking
from pipeline.core import compute
from pipeline.data import embeddings, outputs, shards, text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    params = config.load()
    outputs.ensure_writable(args.out)
    compute.setup(params.compute)  # a fixed thread count: the same bits on every rerun
    prompts = shards.read_manifest(args.manifest)["prompt"].tolist()
    with tracking.run("embed", params) as run:
        encoder = text.TextEncoder(params.text.encoder, params.text.max_tokens, params.text.batch_size)
        info = {"encoder": params.text.encoder, "max_tokens": params.text.max_tokens}
        count = embeddings.write(prompts, encoder, args.out, info)
        run.log_metrics({"prompts": count})
    print(f"embed: {count} distinct prompts of {len(prompts)} samples -> {args.out}")


if __name__ == "__main__":
    main()

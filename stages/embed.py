"""Stage `embed`: the frozen text encoder's embeddings of every prompt of the manifest (and of "")."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import config, tracking
from pipeline.core import compute
from pipeline.data import embeddings, outputs, sd3_text, shards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    params = config.load()
    outputs.ensure_writable(args.out)
    device = compute.setup(params.compute)  # a fixed thread count: the same bits on every rerun
    prompts = shards.read_manifest(args.manifest)["prompt"].tolist()
    with tracking.run("embed", params) as run:
        # text.encoder "pretrained": the SD3 text encoders of model.pretrained's folder, which the cards name
        folder = params.model.pretrained if params.text.encoder == sd3_text.PRETRAINED else ""
        encoder = sd3_text.load_encoder(params.text.encoder, params.text.max_tokens, params.text.batch_size, folder,
                                        device)
        info = {"encoder": params.text.encoder, "max_tokens": params.text.max_tokens}
        info |= {"folder": folder} if folder else {}
        count = embeddings.write(prompts, encoder, args.out, info)
        run.log_metrics({"prompts": count})
    print(f"embed: {count} distinct prompts of {len(prompts)} samples -> {args.out}")


if __name__ == "__main__":
    main()

"""Stage `embed`: the frozen text encoder's embeddings of every prompt of the manifest (and of ""), and,
for a model of a VAE's latent space (``model.pretrained``), every curated image's latents."""
from __future__ import annotations

import argparse
from pathlib import Path

import stages
from pipeline import config, tracking
from pipeline.core import compute, latents
from pipeline.curation import sd3_text
from pipeline.data import embeddings, outputs, shards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--shards", type=Path, required=True, help="the curated shards (their images' latents)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    params = config.load()
    outputs.ensure_writable(args.out)
    device = compute.setup(params.compute)  # a fixed thread count: the same bits on every rerun
    manifest = shards.read_manifest(args.manifest)
    prompts = manifest["prompt"].tolist()
    with tracking.run("embed", params) as run:
        # text.encoder "pretrained": the SD3 text encoders of model.pretrained's folder, which the cards name
        folder = params.model.pretrained if params.text.encoder == sd3_text.PRETRAINED else ""
        encoder = sd3_text.load_encoder(params.text.encoder, params.text.max_tokens, params.text.batch_size, folder,
                                        device)
        info = {"encoder": params.text.encoder, "max_tokens": params.text.max_tokens}
        info |= {"folder": folder} if folder else {}
        space, encoded = latents.space(params.model.pretrained, device), None
        if space is not latents.PIXELS:  # a latent-space model: its VAE runs here, once, not in every stage
            groups = manifest[["bucket", "split"]].drop_duplicates().itertuples(index=False, name=None)
            encoded = latents.encode_records([r for b, s in groups for r in shards.read_records(args.shards, b, s)],
                                             space)
        count = embeddings.write(prompts, encoder, args.out, info, encoded)
        run.log_metrics({"prompts": count} | ({"latents": len(encoded[1])} if encoded else {}))
    print(f"embed: {count} distinct prompts of {len(prompts)} samples -> {args.out}")


if __name__ == "__main__":
    stages.run(main)

"""Stage `curate`: render the ShapesEdit buckets (and any external edit CSV) to webdataset shards."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import config
from pipeline.data import curate, text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shards", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, required=True)
    args = parser.parse_args()

    params = config.load()
    encoder = text.TextEncoder(params.text.encoder, params.text.max_tokens, params.text.batch_size)
    manifest = curate.curate(params.world, params.data, encoder, args.shards, args.manifest)
    counts = manifest.groupby(["bucket", "split"]).size()
    print(f"curate: {len(manifest)} samples in {manifest['shard'].nunique()} shards\n{counts.to_string()}")


if __name__ == "__main__":
    main()

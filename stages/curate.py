"""Stage `curate`: render the ShapesEdit buckets (and any external edit CSV) to webdataset shards."""
from __future__ import annotations

import argparse
from pathlib import Path

import stages
from pipeline import config, tracking
from pipeline.curation import curate
from pipeline.data import outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shards", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, required=True)
    args = parser.parse_args()

    params = config.load()
    outputs.ensure_writable(args.shards, args.manifest)
    with tracking.run("curate", params) as run:
        manifest = curate.curate(params.world, params.data, args.shards, args.manifest)
        counts = manifest.groupby(["bucket", "split"]).size()
        run.log_metrics({f"samples.{b}.{s}": n for (b, s), n in counts.items()})
    print(f"curate: {len(manifest)} samples in {manifest['shard'].nunique()} shards\n{counts.to_string()}")


if __name__ == "__main__":
    stages.run(main)

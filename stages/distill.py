"""Stage `distill`: one student distilled from every routed field, for the method named in argv."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import config, distill, tracking


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("method", help="a key of params distill.methods")
    parser.add_argument("--shards", type=Path, required=True)
    parser.add_argument("--models", type=Path, required=True, help="root of the trained models")
    parser.add_argument("--router", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    cfg = config.load()
    params = {"method": distill.resolve_method(cfg, args.method), "fields": cfg.fields, "routing": cfg.routing}
    with tracking.run(f"distill@{args.method}", params, name=args.method) as run:
        _, history = distill.train_student(cfg, args.method, args.shards, args.models, args.router, args.out,
                                           on_log=lambda step, row: run.log_metrics(row, step))
        run.log_artifact(args.out / "samples.png")
    last = history[-1]
    print(f"distill {args.method}: final loss {last['loss']:.5f}, {last['samples_per_s']:.1f} samples/s")


if __name__ == "__main__":
    main()

"""Stage `report`: report/results.md, report/results.json and report/scores.png from the metrics."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline import config, report, tracking


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    cfg = config.load()
    results = report.collect(cfg, args.metrics)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(report.markdown(results))
    (args.out / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    report.plot(results, args.out / "scores.png")
    with tracking.run("report", {"models": [r["model"] for r in results["models"]]}) as run:
        for name in ("results.md", "results.json", "scores.png"):
            run.log_artifact(args.out / name)
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()

"""Stage `report`: report/results.md, results.json and scores.png in the paper's shape."""
from __future__ import annotations

import argparse
from pathlib import Path

import stages
from pipeline import config, report, tracking


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--eval", type=Path, required=True, help="the folder of the models' metrics")
    parser.add_argument("--outcomes", type=Path, required=True, help="the folder of their per-sample outcomes")
    parser.add_argument("--evaluator", type=Path, required=True)
    parser.add_argument("--router", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    params = config.load()
    results = report.collect(args.eval, args.outcomes, args.evaluator, args.router, params.settings, params.fields)
    with tracking.run("report", params) as run:
        for path in report.write(results, args.out):
            run.log_artifact(path)
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    stages.run(main)

"""The paper's figures as queued DVC experiments (`pipeline.figures` defines the sweeps).

    python tools/sweep.py queue query k rollout init cfg realism   # queue every point (once each)
    python tools/sweep.py queue query --start -j 1 --wait          # ... and run the queue, waiting
    dvc exp show                                                   # the points, as experiments
    python tools/sweep.py collect                                  # report/figures/ + report/figures.md

`queue` names each experiment ``<sweep>_<point>`` (the reference, the default student, ``ref``),
skips a name an experiment already has, and with ``--start`` creates the MLflow store once before
`dvc queue start` starts its workers. `collect` reads the finished experiments' committed outcomes
(``git show <exp>:data/outcomes/...``) and the MLflow store, and re-runs nothing.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import figures, tracking  # noqa: E402


def _dvc(*args: str) -> str:
    proc = subprocess.run(["dvc", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"sweep: dvc {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def experiments() -> dict[str, str]:
    """name -> commit of every experiment of this repository (the newest of a name)."""
    out = subprocess.run(["git", "for-each-ref", "--sort=committerdate", "--format=%(refname) %(objectname)",
                          "refs/exps"], capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        ref, sha = line.split()
        if "/celery/" not in ref and ref.count("/") >= 4:  # refs/exps/<baseline>/<name>
            found[ref.rsplit("/", 1)[1]] = sha
    return found


def queue(sweeps: list[str], points: list[str] | None) -> list[str]:
    done, queued = set(experiments()), []
    for sweep in sweeps:
        for point in points or figures.SWEEPS[sweep][1]:
            name, overrides = figures.experiment(sweep, point)
            if name in done:
                print(f"sweep: {name} already exists (dvc exp remove {name} to run it again)")
                continue
            _dvc("exp", "run", "--queue", "-n", name, *(a for k, v in overrides.items() for a in ("-S", f"++{k}={v}")))  # ++: add or override (a method key new to {})
            done.add(name)
            queued.append(name)
            print(f"sweep: queued {name} {overrides}")
    return queued


def wait(poll: float = 5.0) -> None:
    """Until the queue has nothing queued or running; a failed experiment is an error naming it."""
    while True:
        status = _dvc("queue", "status")
        if not any(word in status for word in ("Queued", "Running")):
            break
        time.sleep(poll)
    failed = [line.split()[1] for line in status.splitlines() if line.strip().endswith("Failed")]
    if failed:
        logs = {name: subprocess.run(["dvc", "queue", "logs", name], capture_output=True, text=True) for name in failed}
        tails = "\n".join(f"--- dvc queue logs {n} (its end):\n" + "\n".join((p.stdout + p.stderr).splitlines()[-25:])
                          for n, p in logs.items())
        raise SystemExit(f"sweep: {', '.join(failed)} failed:\n{status}\n{tails}")


def _read(sha: str, path: str) -> dict | None:
    proc = subprocess.run(["git", "show", f"{sha}:{path}"], capture_output=True, text=True)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def collect(out: Path, page: Path) -> dict:
    found, collected = experiments(), {}
    for sweep, (_, points, _, _) in figures.SWEEPS.items():
        shas = {p: found[n] for p in points if (n := figures.experiment(sweep, p)[0]) in found}
        outcomes = {p: o for p, sha in shas.items()
                    if (o := _read(sha, f"data/outcomes/{figures.student(sweep, p)}.json")) is not None}
        if sweep == "cfg":
            metrics = {p: _read(sha, f"data/metrics/eval/{figures.student(sweep, p)}.json") for p, sha in shas.items()}
            collected[sweep] = figures.cfg_grid(outcomes, {p: m["nfe"] for p, m in metrics.items() if m})
        elif sweep == "realism":
            keys = ["val/t2i/realism", "val/t2i/realism_lo", "val/t2i/realism_hi"]
            curves = {p: [{"step": r["step"], "realism": r[keys[0]], "lo": r[keys[1]], "hi": r[keys[2]]}
                          for r in tracking.history(figures.experiment(sweep, p)[0], f"distill_realism@{p}-0", keys)
                          if all(k in r for k in keys)] for p in shas}
            sha = next(iter(shas.values()), None)  # the sources' outcomes: the same in every point
            init, teacher = (_read(sha, f"data/outcomes/sources/{m}.json") if sha else None for m in ("base", "realism"))
            collected[sweep] = figures.realism_curves({p: c for p, c in curves.items() if c}, outcomes, init, teacher)
        else:
            collected[sweep] = figures.ablation(sweep, outcomes)
    measured = lambda d: (any("difference" in p for p in d.get("points", {}).values())  # noqa: E731
                          or len(d.get("grid", {})) > 1 or d.get("curves"))
    collected = {s: d for s, d in collected.items() if measured(d)}
    for path in figures.write(collected, out, page):
        print(f"sweep: wrote {path}")
    for line in figures.readings(collected):
        print(line)
    return collected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("queue", help="queue a sweep's experiments")
    q.add_argument("sweeps", nargs="+", choices=sorted(figures.SWEEPS))
    q.add_argument("--points", nargs="+", help="only these points (default: all of the sweep)")
    q.add_argument("--start", action="store_true", help="then start the queue (dvc queue start)")
    q.add_argument("-j", "--jobs", type=int, default=1, help="queue workers (2 cores: 1, each stage 2 threads)")
    q.add_argument("--wait", action="store_true", help="with --start: until the queue is done")
    c = sub.add_parser("collect", help="the finished experiments into report/figures/")
    c.add_argument("--out", type=Path, default=Path("report/figures"))
    c.add_argument("--page", type=Path, default=Path("report/figures.md"))
    args = parser.parse_args()
    if args.command == "collect":
        collect(args.out, args.page)
        return
    queue(args.sweeps, args.points)
    if args.start:
        tracking.prepare(tracking.tracking_uri())  # once, before the workers: they would race to create it
        _dvc("queue", "start", "-j", str(args.jobs))
        if args.wait:
            wait()


if __name__ == "__main__":
    main()

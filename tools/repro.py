"""`dvc repro`, several stages at a time, then `dvc commit`.

`dvc repro` runs one stage at a time. This runs the stale stages of `dvc.yaml` (and everything
downstream of them) as soon as the stages whose outputs they read are done, `--jobs` at once: on
the 2-core CPU, two at a time halve the default run's wall time; on a GPU machine several small
stages share the card (one alone leaves it idle most of the time). Each stage runs its own `cmd`
from the repository root with `DVC_STAGE` set, as DVC runs it, its output in
`.dvc/tmp/repro/<stage>.log`. `dvc commit -f` then records the stages that succeeded in
`dvc.lock` (DVC hashes their outputs; the run-cache is not consulted). A failed stage stops new
starts; the running ones finish, those that succeeded are committed (a rerun starts after them),
and the log names the failure. Frozen stages are left as they are.

    python tools/repro.py --jobs 2                        # the default params, ~30 min on 2 cores
    python tools/repro.py --jobs 8 --dry                  # what would run
    python tools/repro.py -j 2 -S eval.guidance=3         # params changed first, as `dvc exp run -S`

`-S` edits `params.yaml` in place with DVC's own override code (`dvc exp run -S` does the same in
the workspace; `git checkout params.yaml` undoes it).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from dvc.repo import Repo
from dvc.utils.hydra import apply_overrides

LOGS = Path(".dvc/tmp/repro")


def _within(a: str, b: str) -> bool:
    """Whether the paths a and b are the same, or one is inside the other."""
    a, b = a.rstrip("/"), b.rstrip("/")
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def plan(repo: Repo) -> tuple[dict[str, tuple[str, str]], dict[str, set[str]], set[str]]:
    """(stage -> (cmd, its working folder), stage -> the stages it reads outputs of, the stages to run)."""
    stages = {s.addressing: s for s in repo.index.stages if s.cmd and not s.frozen}
    outs = {name: [str(o.def_path) for o in s.outs] for name, s in stages.items()}
    needs = {name: {other for other in stages if other != name
                    and any(_within(str(d.def_path), o) for d in s.deps for o in outs[other])}
             for name, s in stages.items()}
    todo = set(repo.status()) & set(stages)
    while grown := {n for n in stages if n not in todo and needs[n] & todo}:  # downstream of a stale stage
        todo |= grown
    return {n: (s.cmd, s.wdir) for n, s in stages.items()}, needs, todo


def run(cmds: dict[str, tuple[str, str]], needs: dict[str, set[str]], todo: set[str],
        jobs: int) -> tuple[list[str], list[str]]:
    """Run `todo` in dependency order, `jobs` at once: (the stages that succeeded, those that failed)."""
    LOGS.mkdir(parents=True, exist_ok=True)
    done, running, failed, succeeded = set(cmds) - todo, {}, [], []

    def start(name: str):
        tic, (cmd, wdir) = time.time(), cmds[name]
        with open(LOGS / f"{name}.log", "w") as log:
            code = subprocess.run(cmd, shell=True, cwd=wdir, env=os.environ | {"DVC_STAGE": name}, stdout=log,
                                  stderr=subprocess.STDOUT).returncode
        return code, time.time() - tic

    with ThreadPoolExecutor(jobs) as pool:
        while todo or running:
            for name in sorted(todo):
                if len(running) < jobs and needs[name] <= done and not failed:
                    todo.discard(name)
                    print(f"{time.strftime('%H:%M:%S')} start {name}", flush=True)
                    running[pool.submit(start, name)] = name
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                name = running.pop(future)
                code, seconds = future.result()
                if code == 0:
                    done.add(name)
                    succeeded.append(name)
                else:
                    failed.append(name)
                state = "done" if code == 0 else f"FAILED (exit {code}; see {LOGS / name}.log)"
                print(f"{time.strftime('%H:%M:%S')} {state} {name} in {seconds:.0f} s", flush=True)
    return succeeded, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", "-j", type=int, default=2, help="stages at once")
    parser.add_argument("--dry", action="store_true", help="list the stages that would run, and stop")
    parser.add_argument("--set-param", "-S", action="append", default=[], metavar="KEY=VALUE",
                        help="change params.yaml first, as `dvc exp run -S` (repeatable)")
    args = parser.parse_args()
    if args.set_param:
        apply_overrides(Path("params.yaml"), args.set_param)
    with Repo(".") as repo:
        cmds, needs, todo = plan(repo)
    print(f"{len(todo)} stage(s) to run: {', '.join(sorted(todo)) or 'none'}", flush=True)
    if args.dry or not todo:
        return
    succeeded, failed = run(cmds, needs, todo, args.jobs)
    if succeeded:
        subprocess.run([sys.executable, "-m", "dvc", "commit", "-f", "-q", *succeeded], check=True)
        print(f"dvc.lock updated for {len(succeeded)} stage(s) (dvc commit)", flush=True)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()

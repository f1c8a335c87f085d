"""`dvc repro`, several stages at a time, with DVC deciding what runs.

`dvc repro` runs one stage at a time. This starts each stage that may be stale (a stale stage now,
or one downstream of it) as its own `dvc --wait-for-lock repro -s <stage>` once every stage whose
outputs it reads has settled, `--jobs` at once: on a GPU machine several small stages share the
card; on 2 CPU cores two at a time with one torch thread each (`-S compute.threads=1`). DVC keeps
its semantics stage by stage: it skips a stage that did not change (an upstream that rewrote
identical bytes leaves its downstream alone), restores from the run-cache, writes that stage's
`dvc.lock` entry as soon as it finishes, and holds the repository lock only around its own
bookkeeping, not while the stage's command runs (the processes queue for it: `--wait-for-lock`).
Each stage's output is in `.dvc/tmp/repro/<stage>.log`. A failed stage stops new starts; the
running ones finish, and what succeeded is already in `dvc.lock` (a rerun goes on after it), as
after a Ctrl-C. Frozen stages are left as they are.

    python tools/repro.py --jobs 2 -S compute.threads=1   # the default params, two stages at a time
    python tools/repro.py --jobs 8 --dry                  # what may run
    python tools/repro.py -j 2 -S eval.guidance=3         # params changed first, as `dvc exp run -S`

`-S` edits `params.yaml` in place with DVC's own override code (`dvc exp run -S` does the same in
the workspace; `git checkout params.yaml` undoes it); with `--dry` it is refused (a dry run changes
nothing).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from dvc.repo import Repo
from dvc.utils.hydra import apply_overrides

LOGS = Path(".dvc/tmp/repro")
SKIPPED = "didn't change, skipping"  # what `dvc repro -s` prints for a stage it leaves alone


def _within(a: str, b: str) -> bool:
    """Whether the paths a and b are the same, or one is inside the other."""
    a, b = a.rstrip("/"), b.rstrip("/")
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def plan(repo: Repo) -> tuple[dict[str, set[str]], set[str]]:
    """(stage -> the stages it reads outputs of, the stages that may need to run: stale now, or downstream
    of a stale one; DVC decides for each when it starts)."""
    stages = {s.addressing: s for s in repo.index.stages if s.cmd and not s.frozen}
    outs = {name: [str(o.def_path) for o in s.outs] for name, s in stages.items()}
    needs = {name: {other for other in stages if other != name
                    and any(_within(str(d.def_path), o) for d in s.deps for o in outs[other])}
             for name, s in stages.items()}
    todo = set(repo.status()) & set(stages)
    while grown := {n for n in stages if n not in todo and needs[n] & todo}:
        todo |= grown
    return needs, todo


def run(needs: dict[str, set[str]], todo: set[str], jobs: int) -> tuple[list[str], list[str], list[str]]:
    """`dvc repro -s` each stage of `todo` once its upstream has settled, `jobs` at once: (the stages
    that ran, those DVC left alone, those that failed)."""
    LOGS.mkdir(parents=True, exist_ok=True)
    settled, running, ran, skipped, failed = set(needs) - todo, {}, [], [], []

    def start(name: str) -> tuple[int, float, bool]:
        tic, log_path = time.time(), LOGS / f"{name}.log"
        with open(log_path, "w") as log:
            code = subprocess.run([sys.executable, "-m", "dvc", "--wait-for-lock", "repro", "-s", name],
                                  stdout=log, stderr=subprocess.STDOUT).returncode
        return code, time.time() - tic, SKIPPED in log_path.read_text()

    with ThreadPoolExecutor(jobs) as pool:
        while todo or running:
            for name in sorted(todo):
                if len(running) < jobs and needs[name] <= settled and not failed:
                    todo.discard(name)
                    print(f"{time.strftime('%H:%M:%S')} start {name}", flush=True)
                    running[pool.submit(start, name)] = name
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                name = running.pop(future)
                code, seconds, unchanged = future.result()
                if code:
                    failed.append(name)
                    state = f"FAILED (exit {code}; see {LOGS / name}.log)"
                else:
                    settled.add(name)
                    (skipped if unchanged else ran).append(name)
                    state = "unchanged" if unchanged else "done"
                print(f"{time.strftime('%H:%M:%S')} {state} {name} in {seconds:.0f} s", flush=True)
    return ran, skipped, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", "-j", type=int, default=2, help="stages at once")
    parser.add_argument("--dry", action="store_true", help="list the stages that may run, and stop")
    parser.add_argument("--set-param", "-S", action="append", default=[], metavar="KEY=VALUE",
                        help="change params.yaml first, as `dvc exp run -S` (repeatable)")
    args = parser.parse_args()
    if args.set_param and args.dry:
        parser.error("-S edits params.yaml; a --dry run changes nothing (drop one of them)")
    if args.set_param:
        apply_overrides(Path("params.yaml"), args.set_param)
    with Repo(".") as repo:
        needs, todo = plan(repo)
    print(f"{len(todo)} stage(s) may run: {', '.join(sorted(todo)) or 'none'}", flush=True)
    if args.dry or not todo:
        return
    ran, skipped, failed = run(needs, todo, args.jobs)
    print(f"{len(ran)} ran, {len(skipped)} unchanged (left by DVC), {len(failed)} failed", flush=True)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()

"""tools/repro.py: `dvc repro -s` several stages at a time, DVC deciding what runs, on a toy DVC repository."""
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

TOOL = Path(__file__).resolve().parents[1] / "tools" / "repro.py"
WRITE = "python -c \"import sys, time; time.sleep(0.5); open(sys.argv[2], 'w').write(open(sys.argv[1]).read() + sys.argv[3])\""


def _run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert not check or proc.returncode == 0, f"{cmd}: {proc.stdout}\n{proc.stderr}"
    return proc


def _stage(src: str, out: str, mark: str) -> dict:
    return {"cmd": f"{WRITE} {src} {out} {mark}", "deps": [src], "outs": [out]}


def _repo(tmp_path: Path) -> Path:
    """a -> (b, c) -> d: b and c can run together."""
    repo = tmp_path / "toy"
    repo.mkdir()
    _run(["git", "init", "-q"], repo)
    _run(["dvc", "init", "-q"], repo)
    (repo / "seed.txt").write_text("s")
    (repo / "params.yaml").write_text("unused: {knob: 0}\n")
    stages = {"a": _stage("seed.txt", "a.txt", "a"), "b": _stage("a.txt", "b.txt", "b"),
              "c": _stage("a.txt", "c.txt", "c"),
              "d": {"cmd": f"{WRITE} b.txt d.txt d && cat c.txt >> d.txt", "deps": ["b.txt", "c.txt"], "outs": ["d.txt"]}}
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    return repo


def _ran(output: str, state: str = "done") -> list[str]:
    """The stages the tool reports in `state` ("HH:MM:SS done <stage> in N s"; unchanged: DVC left it)."""
    return sorted(re.findall(rf"^\d\d:\d\d:\d\d {state} (\S+) in ", output, re.MULTILINE))


def test_runs_the_stale_stages_in_dependency_order_and_commits_them(tmp_path):
    repo = _repo(tmp_path)
    out = _run([sys.executable, str(TOOL), "--jobs", "2"], repo).stdout
    assert _ran(out) == ["a", "b", "c", "d"]
    starts = [line.split()[-1] for line in out.splitlines() if " start " in line]
    assert starts[0] == "a" and starts[-1] == "d"  # b and c after a, d after both
    assert (repo / "d.txt").read_text() == "sabdsac"
    assert "up to date" in _run(["dvc", "status"], repo).stdout  # dvc.lock records every stage
    assert "0 stage(s) may run" in _run([sys.executable, str(TOOL)], repo).stdout

    assert "0 stage(s) may run" in _run([sys.executable, str(TOOL), "-S", "unused.knob=1"], repo).stdout
    assert yaml.safe_load((repo / "params.yaml").read_text()) == {"unused": {"knob": 1}}  # as dvc exp run -S
    dry = _run([sys.executable, str(TOOL), "--dry", "-S", "unused.knob=2"], repo, check=False)
    assert dry.returncode != 0 and "a --dry run changes nothing" in dry.stderr
    assert yaml.safe_load((repo / "params.yaml").read_text()) == {"unused": {"knob": 1}}


def test_an_upstream_that_rewrites_the_same_bytes_runs_alone(tmp_path):
    """DVC's answer, stage by stage: a's output edited by hand makes a stale; a reruns and writes
    what it wrote before, so b, c and d, whose deps are then unchanged, are left alone."""
    repo = _repo(tmp_path)
    _run([sys.executable, str(TOOL), "-j", "2"], repo)
    (repo / "a.txt").write_text("changed")
    out = _run([sys.executable, str(TOOL), "-j", "2"], repo).stdout
    assert _ran(out) == ["a"] and _ran(out, "unchanged") == ["b", "c", "d"]
    assert "up to date" in _run(["dvc", "status"], repo).stdout
    (repo / "seed.txt").write_text("t")  # a new source: every stage's input changes, every stage runs
    out = _run([sys.executable, str(TOOL), "-j", "2"], repo).stdout
    assert _ran(out) == ["a", "b", "c", "d"] and (repo / "d.txt").read_text() == "tabdtac"


def test_a_failed_stage_stops_the_run_and_only_what_succeeded_is_committed(tmp_path):
    repo = _repo(tmp_path)
    spec = yaml.safe_load((repo / "dvc.yaml").read_text())
    spec["stages"]["c"]["cmd"] = "python -c 'raise SystemExit(3)'"
    (repo / "dvc.yaml").write_text(yaml.safe_dump(spec))
    proc = _run([sys.executable, str(TOOL), "-j", "2"], repo, check=False)
    assert proc.returncode != 0 and "failed: c" in proc.stderr
    assert "FAILED (exit" in proc.stdout and " start d" not in proc.stdout
    assert "failed to reproduce 'c'" in (repo / ".dvc" / "tmp" / "repro" / "c.log").read_text()
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]  # what succeeded is committed
    assert "a" in lock and "c" not in lock and "d" not in lock
    assert " a," not in _run([sys.executable, str(TOOL), "--dry"], repo).stdout  # a rerun starts after it

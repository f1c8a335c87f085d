"""Which params keys a process reads: with ``DANCEOPD_PARAMS_TRACE=<dir>`` in the environment, every
key a stage's code reads from its `Config` (`schema.Section` records leaf reads; a mapping of
sections records its whole key when its set of names is read; a resolved method's value counts as a
read of the key it came from) is written to ``<dir>`` at exit. The tests run the tiny pipeline that
way and check each stage's ``params:`` in dvc.yaml against what its code read.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import os
import sys
from pathlib import Path

TRACE_ENV = "DANCEOPD_PARAMS_TRACE"
reads: set[str] | None = None  # the keys read in this process, while tracing


class TracedSections(dict):
    """A name -> section mapping that records the whole key when its set of names is read."""

    def __init__(self, items: dict, where: str):
        super().__init__(items)
        self._where = where

    def _all(self) -> None:
        reads.add(self._where)

    def __iter__(self):
        self._all()
        return super().__iter__()

    def __len__(self) -> int:
        self._all()
        return super().__len__()

    def __contains__(self, key) -> bool:
        self._all()
        return super().__contains__(key)

    def keys(self):
        self._all()
        return super().keys()

    def items(self):
        self._all()
        return super().items()

    def values(self):
        self._all()
        return super().values()


def start() -> None:
    """Start recording, when the environment asks for it (once per process; `loader.parse` calls it)."""
    global reads
    folder = os.environ.get(TRACE_ENV)
    if folder and reads is None:
        reads = set()
        atexit.register(_write, Path(folder))


def _write(folder: Path) -> None:
    argv = sys.orig_argv[1:]
    folder.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(json.dumps(argv).encode()).hexdigest()[:16]
    (folder / f"{name}.json").write_text(json.dumps({"argv": argv, "read": sorted(reads or ())}, indent=1))

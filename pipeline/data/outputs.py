"""Writing outputs safely: checked before long work, renamed into place only when complete.

Every stage output that is a folder (shards, embeddings, models, the evaluator, the router) is
written under a temporary name beside its final one and renamed into place when complete, so a
failed or killed stage never leaves a half-written output that reads as valid; the temporary
folder is removed on failure. A stage checks that it can write its outputs before it starts,
so a read-only folder fails in a second instead of after hours of training.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def ensure_writable(*outputs: str | Path) -> None:
    """Fail now when an output cannot be written where its final move needs it: its folder (or the
    nearest existing one above it) must take a file, and an existing output folder must let its
    old contents be removed (each folder of it writable); the error names the output. Creates
    nothing that outlives the check."""
    for out in map(Path, outputs):
        folder = out.absolute().parent
        while not folder.exists():
            folder = folder.parent
        _probe(out, folder)
        if out.is_dir() and not out.is_symlink():  # the old output, removed when the new one is complete
            _probe(out, out)
            for sub, _, _ in os.walk(out):
                if not os.access(sub, os.W_OK | os.X_OK):
                    raise PermissionError(f"{out}: cannot replace it: {sub} is read-only (its old contents "
                                          f"could not be removed when the new output is complete)")


def _probe(out: Path, folder: Path) -> None:
    probe = folder / f".{out.name}.write-check-{os.getpid()}"  # one per process: ranks probe at once
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"{out}: cannot write into {folder} ({err.strerror or err})") from err


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `final`: it replaces `final` when the block completes
    and is removed when it fails (a leftover of an earlier killed run is removed first)."""
    final = Path(final)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        elif final.exists() or final.is_symlink():  # a file (or a link) where the folder goes
            final.unlink()
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after the rename

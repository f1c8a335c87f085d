"""One thin script per DVC stage (`python -m stages.<name>`); each hands its `main` to `run`.

A stage that fails prints one line to stderr, ``<stage>: <what went wrong>`` (the messages name the
file, row, column or key), and exits 1; ``DANCEOPD_DEBUG=1`` shows the traceback as well.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable

DEBUG_ENV = "DANCEOPD_DEBUG"


def run(main: Callable[[], object]) -> None:
    """Call a stage's `main`; a failure is one line on stderr and exit status 1 (module docstring)."""
    try:
        main()
    except Exception as err:  # noqa: BLE001  (every failure: a user reads the line; a developer sets DEBUG)
        if os.environ.get(DEBUG_ENV) == "1":
            raise
        print(f"{_stage(main)}: {_message(err)} ({DEBUG_ENV}=1 shows the traceback)", file=sys.stderr)
        sys.exit(1)


def _stage(main: Callable) -> str:
    """The DVC stage's name (``distill@t2i_edit-danceopd-0``), else the script's (``python -m stages.distill``)."""
    module = main.__module__
    if module == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec is not None else module
    return os.environ.get("DVC_STAGE") or module.removeprefix("stages.")


def _message(err: Exception) -> str:
    """What went wrong, in words: the pipeline's messages as they are (they name the file, row or key);
    a bare OS error with its file; any other exception with its type."""
    if isinstance(err, OSError) and err.strerror and err.filename:
        return f"{err.filename}: {err.strerror}"
    if isinstance(err, FileNotFoundError) and len(err.args) == 1 and " " not in str(err.args[0]):
        return f"{err.args[0]}: no such file or folder"  # pyarrow's and others': the path alone
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    if isinstance(err, (ValueError, OSError, RuntimeError)):
        return str(err)
    return f"{type(err).__name__}: {err}"

"""Where a run may be written: a new or empty directory, or (with ``--overwrite``) an earlier run of the kit.

Light on purpose (no pandas, no torch): the CLI checks ``--out`` before any heavy import. A run directory is
recognised by its marker file, which :func:`probes.run.rundir.write_run` writes first; a directory without
one holds the user's own files and is never written into.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from probes.core.errors import ProbesError

MARKER = ".probes-run"  # JSON {"run_id": ...}; results.json carries the same run id
RESULTS = "results.json"


def require_run_dir(run_dir: str | os.PathLike) -> Path:
    """A directory that holds a finished run (checked in full by :func:`probes.run.rundir.read_run`)."""
    out = Path(run_dir)
    if not (out / RESULTS).is_file():
        raise ProbesError(f"no {RESULTS} in '{out}': point at the --out directory of a finished `probes run`")
    return out


def check_out_dir(out_dir: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse, before any work, an ``--out`` that is a file, unwritable, a directory of the user's own files, or
    (without ``overwrite``) an earlier run: only a directory holding the kit's marker file is ever replaced."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ProbesError(f"--out '{out}' is an existing file, not a run directory: choose a new directory name")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise ProbesError(
                f"--out '{out}' holds files not written by `probes run` (no {MARKER} marker): it is never written "
                "into; choose a new or empty directory"
            )
        if not overwrite:
            raise ProbesError(f"--out '{out}' holds an earlier run: pass --overwrite to replace it, or choose a new name")
    parent = next(p for p in out.absolute().parents if p.exists())
    try:  # the one sure test (permission bits do not bind root, /proc refuses anyway): make and remove a directory
        os.rmdir(tempfile.mkdtemp(prefix=".probes-write-test.", dir=parent))
    except OSError as err:
        raise ProbesError(f"cannot write --out '{out}' in '{parent}' ({err.strerror}): choose another place") from None
    return out

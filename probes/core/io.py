"""Atomic writes: every file or directory the kit produces appears whole or not at all.

A temporary sibling is written and then renamed over the target (``os.replace`` is atomic on one file system),
so an interrupted run, a full disk or a crash never leaves a half-written cache, table or report behind.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces it only if the body finishes: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would make outputs unreadable to anyone else
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """A scratch directory beside ``path`` that replaces it (and whatever was there) only if the body finishes.

    An existing ``path`` is swapped with the scratch directory in one ``renameat2(RENAME_EXCHANGE)`` where the
    kernel has it, so a crash at any moment leaves the old directory or the new one at ``path``, never a mix or
    nothing; elsewhere the old one is renamed aside first (a crash between the two renames leaves nothing there).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary directory
    try:
        yield tmp
        if not final.exists():
            os.replace(tmp, final)
        elif not _exchange(tmp, final):  # tmp now holds the old directory, removed below
            aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
            os.replace(final, aside / "old")
            os.replace(tmp, final)
            tmp = aside
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2`` with ``RENAME_EXCHANGE``); False where that is unavailable."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def remove_stale_temps(path: str | os.PathLike, older_than_s: float) -> list[Path]:
    """Remove scratch directories :func:`atomic_dir` left beside ``path`` (a killed process cannot clean up).

    Only those older than ``older_than_s`` go, so a build still running in another process keeps its own.
    """
    final = Path(path)
    if not final.parent.is_dir():
        return []
    cutoff = time.time() - older_than_s
    stale = [
        p for p in final.parent.iterdir()
        if p.name.startswith(f".{final.name}.") and p.is_dir() and p.stat().st_mtime < cutoff
    ]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_table(df, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """A pandas table as ``.csv`` (for people and spreadsheets) or ``.parquet`` (for pandas), by the suffix.

    ``metadata`` goes into a parquet file's key-value schema metadata (a CSV has nowhere to keep it), so the file
    itself says where it came from (:func:`read_table_metadata`)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".csv":
            df.to_csv(tmp, index=False)
        else:  # what DataFrame.to_parquet does, with the metadata added to the schema pandas writes
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(df, preserve_index=False)
            merged = (table.schema.metadata or {}) | {k.encode(): v.encode() for k, v in (metadata or {}).items()}
            pq.write_table(table.replace_schema_metadata(merged), tmp)


def read_table_metadata(path: str | os.PathLike) -> dict[str, str]:
    """A parquet file's key-value schema metadata (pandas' own ``pandas`` entry included), read from its footer."""
    import pyarrow.parquet as pq

    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in (pq.read_schema(path).metadata or {}).items()}

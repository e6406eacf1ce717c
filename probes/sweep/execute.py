"""Running a sweep's cells on Ray: embedded on this machine, or on a cluster at an address.

Each worker is an actor that keeps the last model it loaded, so a model is loaded once per worker, not once per
cell. A cell runs the same two calls as ``probes run`` (:func:`probes.run.pipeline.run_analysis`, then the
report's :func:`probes.report.render.render`) into a scratch directory on the worker, whose files come back to the
driver: only the driver writes under OUT, so a cluster needs no shared output folder, and a cell's directory
appears whole (:func:`probes.core.io.atomic_dir`) or not at all. A complete cell directory is what resume skips.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import resource
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
import ray
import ray.exceptions

import probes
from probes.core.errors import ProbesError
from probes.core.io import atomic_dir
from probes.models.cache import CACHE_ENV, WEIGHTS_FILE, cached_model_dir
from probes.models.registry import PACKAGED
from probes.report.render import INDEX
from probes.run.rundir import read_run
from probes.sweep.spec import Cell

CELL_RECORD = "cell.json"
# A worker holds one float32 model plus torch, TransformerLens and a run's activations: sized from the weights
# file (measured peak resident memory: docs/sweeps.md "Speed and memory"); a model not on disk yet is assumed 2 GB.
OVERHEAD_BYTES = 1.2e9
WEIGHTS_FACTOR = 2.5  # Gemma-3-270m (1.74 GB of weights): 4.5-5.6 GB peak per worker, measured
UNKNOWN_WEIGHTS_BYTES = 2e9


@dataclass
class CellOutcome:
    """What running (or skipping) one cell gave: ``done``, ``failed`` (with its one-line error) or ``complete``
    (found complete on disk and skipped)."""

    name: str
    status: str
    error: str | None = None
    seconds: float | None = None
    peak_rss_mb: float | None = None
    worker: str | None = None


def completed(cell: Cell, cell_dir: Path) -> CellOutcome | None:
    """The cell's outcome, marked ``complete``, if ``cell_dir`` is a whole run directory this cell wrote (its record
    matches the cell, the results read back, the report is there); else None: the cell must run."""
    path = cell_dir / CELL_RECORD
    if not path.is_file() or not (cell_dir / INDEX).is_file():
        return None
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored["cell"] != json.loads(json.dumps(cell.record())):
            return None
        read_run(cell_dir)
    except (ProbesError, ValueError, KeyError):
        return None
    return CellOutcome(**stored["outcome"] | {"status": "complete"})


def one_line(err: BaseException) -> str:
    """A cell's error as one line; an unexpected exception keeps its type name (it is a bug, not bad input)."""
    text = str(err) if isinstance(err, ProbesError) else f"{type(err).__name__}: {err}"
    return " ".join(text.split()) or type(err).__name__


class CellWorker:
    """One Ray actor: loads a model once and runs many cells with it (``ray.remote`` is applied by
    :func:`start_workers`, so the class also runs in-process)."""

    def __init__(self, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.model_name: str | None = None
        self.model = None

    def run(self, cell: Cell, command: str) -> tuple[CellOutcome, dict[str, bytes]]:
        from probes.models.loading import load_model
        from probes.report.render import render
        from probes.run.pipeline import run_analysis

        start = time.perf_counter()
        files: dict[str, bytes] = {}
        try:
            if self.model_name != cell.spec.model:
                self.model = self.model_name = None
                gc.collect()
                self.model = load_model(cell.spec.model)
                self.model_name = cell.spec.model
            with tempfile.TemporaryDirectory(prefix="probes-cell-") as tmp:
                run_analysis(cell.spec, tmp, command=command, model=self.model)
                render(tmp)
                files = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
            status, error = "done", None
        except Exception as err:  # noqa: BLE001 -- a failing cell is recorded, the others go on
            status, error = "failed", one_line(err)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        worker = f"{socket.gethostname()}:{os.getpid()}"
        return CellOutcome(cell.name, status, error, time.perf_counter() - start, peak, worker), files


def write_cell(cell: Cell, cell_dir: Path, files: dict[str, bytes], outcome: CellOutcome) -> None:
    """The run directory a worker produced, plus the cell's record and how it ran, written as one directory."""
    with atomic_dir(cell_dir) as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        record = {"cell": cell.record(), "outcome": asdict(outcome)}
        (tmp / CELL_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def connect(address: str | None) -> str:
    """Start Ray embedded (``address=None``) or join the cluster at ``address``; returns what to call it.

    A cluster address is probed first (:func:`_check_answers`): Ray itself retries an absent cluster for minutes,
    and a sweep against a dead or wrong address should fail at once, in one line. Ray's own logging is kept to
    errors, and what its C++ core prints while joining is held back: a refused join is our one line, not twenty.
    """
    logging.getLogger("ray").setLevel(logging.ERROR)  # before ray.init, which logs while it sets itself up
    env = {CACHE_ENV: os.environ[CACHE_ENV]} if os.environ.get(CACHE_ENV) else {}
    if address is None:
        # workers import the kit the driver runs, from where it runs (a checkout or an install)
        path = os.pathsep.join(filter(None, [str(Path(probes.__file__).parents[1]), os.environ.get("PYTHONPATH")]))
        # "local": a new Ray here even when `ray start` left a cluster on this machine (address=None would join
        # it, and refuse num_cpus). Ray runs workers at niceness 15, which starves them beside any other busy
        # process (measured: ~40% of a core each): here the sweep is the job, so its workers run like `probes run`.
        ray.init(
            address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.ERROR,
            log_to_driver=False, object_store_memory=100 * 2**20, runtime_env={"env_vars": env | {"PYTHONPATH": path}},
            _system_config={"worker_niceness": 0},
        )
        return "embedded"
    _check_answers(address)
    _token_auth_if_token_here()
    with _held_stderr() as printed:
        try:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False, runtime_env={"env_vars": env})
            return address
        except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as err:
            reason = _join_failure(err, printed())
    raise ProbesError(f"could not join the Ray cluster at {address}: {reason}")


def _token_auth_if_token_here() -> None:
    """Ray >= 2.59's `ray start --head` turns token authentication on when a token exists here
    (``~/.ray/auth_token``, which an embedded ``ray.init`` writes if it is missing), but ``ray.init(address=HOST:PORT)`` does not,
    so the driver of such a cluster is refused (``InvalidAuthToken``; flagged in ray-project/ray#64755's review).
    Apply the rule `ray start` applies: a token here (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or the default
    file) means token mode unless ``RAY_AUTH_MODE`` says otherwise; a cluster without authentication ignores it."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


@contextmanager
def _held_stderr() -> Iterator[Callable[[], str]]:
    """Send file descriptor 2 to a scratch file meanwhile (Ray's C++ core writes there, past Python's logging);
    yields a function that reads what was written."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield lambda: (held.seek(0), held.read().decode(errors="replace"))[1]
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _join_failure(err: BaseException, printed: str) -> str:
    """Why a join failed, in one line: a refused token says what to do; otherwise Ray's own message."""
    if "InvalidAuthToken" in printed or "InvalidAuthToken" in str(err.__cause__):
        return ("the cluster refused this machine's authentication token (InvalidAuthToken): copy the head node's "
                "token (`ray get-auth-token` there) to ~/.ray/auth_token here, or set RAY_AUTH_TOKEN")
    return one_line(err)[:300]


# an HTTP/2 client's opening (the preface, then an empty SETTINGS frame): a gRPC server answers with its SETTINGS
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
HTTP2_SETTINGS = 4


def _check_answers(address: str) -> None:
    """Something at ``address`` must answer, and speak gRPC as Ray's GCS (and Ray Client) do: Ray retries a silent
    address for minutes and blocks on one where another service answers (measured: over 10 minutes on an HTTP
    server's port). A cluster with TLS (``RAY_USE_TLS``) is not probed: it would not answer plain HTTP/2."""
    if address == "auto":
        return  # ray.init finds the local cluster or raises ConnectionError
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise ProbesError(f"Ray address '{address}' is not HOST:PORT or ray://HOST:PORT")
    try:
        conn = socket.create_connection((host, int(port)), timeout=5)
    except OSError as err:
        raise ProbesError(
            f"no Ray cluster answers at {address} ({err.strerror or err}): start one there with `ray start --head`, "
            "or drop --address and RAY_ADDRESS to run on this machine"
        ) from None
    with conn:
        if os.environ.get("RAY_USE_TLS", "0").lower() not in ("0", "false", ""):
            return
        try:
            conn.sendall(HTTP2_PREFACE)
            reply = conn.recv(9)
        except OSError:  # silent for 5 s, or hung up
            reply = b""
    if len(reply) < 4 or reply[3] != HTTP2_SETTINGS:
        raise ProbesError(f"something answers at {address}, but not as a Ray cluster does (no gRPC reply): is it the "
                          "port `ray start --head` printed?")


def worker_bytes(cells: list[Cell]) -> float:
    """Memory one worker needs for the largest model among ``cells``."""
    def weights(name: str) -> float:
        path = cached_model_dir(name) / WEIGHTS_FILE if name in PACKAGED else Path(name) / WEIGHTS_FILE
        return path.stat().st_size if path.is_file() else UNKNOWN_WEIGHTS_BYTES

    return OVERHEAD_BYTES + WEIGHTS_FACTOR * max(weights(c.spec.model) for c in cells)


def plan_workers(cells: list[Cell], requested: int | None, embedded: bool) -> tuple[int, int]:
    """(workers, torch threads each): as many as the CPUs and the memory allow, at most one per cell."""
    cpus = int(ray.cluster_resources().get("CPU", 1))
    memory = psutil.virtual_memory().available if embedded else ray.cluster_resources().get("memory", 0)
    fit = max(1, int(memory // worker_bytes(cells)))
    workers = max(1, min(requested or min(cpus, fit), len(cells)))
    return workers, max(1, cpus // workers)


def run_cells(
    cells: list[Cell], cells_dir: Path, workers: int, threads: int, command: str,
    done: Callable[[CellOutcome], None],
) -> None:
    """Run ``cells`` on ``workers`` actors; each finished cell is written, then reported to ``done``."""
    remote = ray.remote(CellWorker).options(num_cpus=threads, max_restarts=2)
    actors = [remote.remote(threads) for _ in range(workers)]
    by_name = {c.name: c for c in cells}
    queue = sorted(cells, key=lambda c: c.spec.model)  # consecutive cells of one model reuse a worker's model
    pending: dict = {}
    while queue or pending:
        while queue and actors:
            actor, cell = actors.pop(), queue.pop(0)
            pending[actor.run.remote(cell, f"{command} (cell {cell.name})")] = (cell, actor)  # pyright: ignore[reportFunctionMemberAccess]  # Ray adds .remote to an actor's methods
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)  # returns each second: Ctrl-C works
        if not ready:
            continue
        cell, actor = pending.pop(ready[0])
        actors.append(actor)
        try:
            outcome, files = ray.get(ready[0])
        except ray.exceptions.RayError as err:  # the worker process died (out of memory, killed): Ray restarts it
            outcome, files = CellOutcome(cell.name, "failed", f"worker died: {one_line(err)[:300]}"), {}
        if outcome.status == "done":
            write_cell(by_name[outcome.name], cells_dir / outcome.name, files, outcome)
        done(outcome)

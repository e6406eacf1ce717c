"""Replication sweeps on embedded Ray over the planted toy model: cells are ordinary runs, resume, failing cells,
per-claim stability; bad input is one line, exit 2, nothing written."""

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from probes import cli
from probes.claims.types import Claim, ClaimResult, Thresholds
from probes.core.stats import Estimate, estimate_mean, ratio_estimate, simultaneous_confidence
from probes.models.loading import save_model_dir
from probes.run.rundir import read_run
from probes.sweep.stability import NOT_SELECTED, CellClaim, ClaimStability

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy_dir(toy_model, tmp_path_factory):
    return save_model_dir(toy_model.model, tmp_path_factory.mktemp("models") / "toy")


def _toml(path: Path, tables: dict | None = None, **fields) -> Path:
    lines = [f"{k} = {json.dumps(v)}" for k, v in fields.items()]
    for name, table in (tables or {}).items():
        lines += [f"[{name}]", *(f"{k} = {json.dumps(v)}" for k, v in table.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def _base(folder: Path, toy_dir: Path, toy_model) -> Path:
    """The toy's previous-token analysis (as in test_cli), 20 prompts so top_effect has 10 groups to choose on
    and 10 to confirm on: the planted head 0.2 is `supported` on every draw, and so is its path into the induction
    head's keys; the path into the decoy (zero output) is `refuted`."""
    heads = toy_model.heads
    return _toml(folder / "base.toml", model=str(toy_dir), task="induction", n=20, src="induction_target",
                 dst="previous", direction="noising", claims=[list(heads.previous_token), "top_effect:1"],
                 compositions=[[list(heads.previous_token), list(heads.induction), "k"],
                               [list(heads.previous_token), list(heads.decoy), "k"]])


@pytest.fixture(scope="module")
def swept(toy_dir, toy_model, tmp_path_factory):
    """One embedded sweep: two seeds x a destination before the source and one after it (those two cells fail, at
    run time: a role the prompts lack is refused before a sweep starts, but where a role sits only the prompts say)."""
    folder = tmp_path_factory.mktemp("sweep")
    _base(folder, toy_dir, toy_model)
    sweep = _toml(folder / "sweep.toml", {"grid": {"seed": [0, 1], "dst": ["previous", "end"]}},
                  title="toy sweep", base="base.toml")
    code = cli.main(["sweep", str(sweep), "--out", str(folder / "out")])
    return folder, code


def test_sweep_runs_cells_records_failures_and_aggregates(swept, toy_model, capsys):
    folder, code = swept
    out = folder / "out"
    assert code == 2  # some cells failed: one line naming them, the rest written
    summary = json.loads((out / "sweep.json").read_text())
    status = {c["name"]: (c["status"], c["error"]) for c in summary["cells"]}
    assert {name: s for name, (s, _) in status.items()} == {
        "seed0-dstprevious": "done", "seed0-dstend": "failed",
        "seed1-dstprevious": "done", "seed1-dstend": "failed",
    }
    for name, (state, error) in status.items():
        assert (out / "cells" / name / "results.json").is_file() == (state == "done")
        if state == "failed":
            assert "is not at or before source" in error and "\n" not in error
    table = pd.read_parquet(out / "stability.parquet")
    csv = pd.read_csv(out / "stability.csv")
    assert csv.columns.tolist() == table.columns.tolist() and csv["split"].tolist() == table["split"].tolist()
    planted = table[(table["layer"] == toy_model.heads.previous_token[0]) & (table["head"] == toy_model.heads.previous_token[1])]
    assert planted[["verdict", "label", "split", "pooled_verdict"]].values.tolist() == [
        ["supported", "stable", "supported 2/2", "supported"]]
    paths = table[table["sender"].notna()].set_index("receiver")  # compositions are pooled like heads
    assert paths[["verdict", "label", "split", "pooled_verdict"]].loc[["1.2", "1.3"]].values.tolist() == [
        ["supported", "stable", "supported 2/2", "supported"], ["refuted", "stable", "refuted 2/2", "refuted"]]
    assert (paths["pooled_path_effect_ci_low"] <= paths["pooled_path_effect"]).all()
    # a head not chosen in every cell is counted as not selected there; the split adds up to the cells
    assert (table["cells"] == 2).all()
    assert (table[[c for c in table if c.startswith("n_")]].sum(axis=1) == 2).all()
    html = (out / "index.html").read_text(encoding="utf-8")
    assert 'href="cells/seed0-dstprevious/index.html"' in html and 'href="cells/seed1-dstprevious/index.html"' in html
    assert "href=\"cells/seed0-dstend" not in html and "is not at or before source" in html
    assert html.count('id="fig-claim-') == len(table)


def test_pooled_effects_are_ratios_of_the_cells_raw_effects_and_gaps(swept, toy_model):
    """A pooled effect is mean(effect) / mean(gap) over every cell's prompts, both in logits from per_prompt.parquet,
    redrawn together over groups: recomputed here from the cells' raw values with the kit's ratio estimate. Dividing
    by a fixed mean gap (each prompt's effect / that cell's mean gap, then a plain mean) gives other intervals."""
    folder, _ = swept
    out = folder / "out"
    table = pd.read_parquet(out / "stability.parquet")
    (planted,) = table[(table["layer"] == toy_model.heads.previous_token[0])
                       & (table["head"] == toy_model.heads.previous_token[1])].to_dict("records")
    runs = [read_run(out / "cells" / name) for name in ("seed0-dstprevious", "seed1-dstprevious")]
    confidence = simultaneous_confidence(runs[0].claims[0].thresholds.alpha, len(table))
    for measure in ("effect_z", "edge_knockout"):
        effect, gap, groups, fixed = [], [], [], []
        for run in runs:  # the planted head is named: judged on every prompt of each cell
            pp = run.per_prompt
            rows = pp[(pp["layer"] == planted["layer"]) & (pp["head"] == planted["head"]) & (pp["path"] == "")
                      & (pp["measure"] == measure)]
            effect += rows["value"].tolist()
            gap += rows["gap"].tolist()
            groups += [run.prompts[i]["clean"] for i in rows["prompt"]]  # one group per prompt: its text
            fixed += (rows["value"] / rows["gap"].mean()).tolist()
        assert len(effect) == sum(run.n_prompts for run in runs) and np.ptp(gap) > 0
        expected = ratio_estimate(np.array(effect), np.array(gap), np.array(groups), confidence=confidence)
        pooled = [planted[f"pooled_{measure}"], planted[f"pooled_{measure}_ci_low"], planted[f"pooled_{measure}_ci_high"]]
        np.testing.assert_allclose(pooled, [expected.value, expected.ci_low, expected.ci_high], rtol=1e-12)
        old = estimate_mean(np.array(fixed), groups=np.array(groups), confidence=confidence)
        assert (old.ci_low, old.ci_high) != pytest.approx((expected.ci_low, expected.ci_high), rel=1e-6)


def test_cell_equals_probes_run(swept, tmp_path):
    folder, _ = swept
    spec = _toml(tmp_path / "seed1.toml", **{**_read_toml(folder / "base.toml"), "seed": 1})
    assert cli.main(["run", str(spec), "--out", str(tmp_path / "run")]) == 0
    _assert_same_run(read_run(folder / "out" / "cells" / "seed1-dstprevious"), read_run(tmp_path / "run"))


def _assert_same_run(cell, alone) -> None:
    """Same heads table, verdicts, evidence with intervals and per-prompt values, to float32 noise."""
    numbers = alone.heads.select_dtypes("number").columns
    np.testing.assert_allclose(cell.heads[numbers], alone.heads[numbers], atol=1e-6, rtol=0)
    assert [(c.claim, c.verdict) for c in cell.claims] == [(c.claim, c.verdict) for c in alone.claims]
    for mine, theirs in zip(cell.claims, alone.claims):
        for name, est in theirs.evidence.items():
            np.testing.assert_allclose(
                [mine.evidence[name].value, mine.evidence[name].ci_low, mine.evidence[name].ci_high],
                [est.value, est.ci_low, est.ci_high], atol=1e-6, rtol=0)
    pd.testing.assert_frame_equal(cell.per_prompt, alone.per_prompt, atol=1e-6, rtol=0)


def _read_toml(path: Path) -> dict:
    import tomllib

    return tomllib.loads(path.read_text())


def test_killed_sweep_resumes_with_only_the_missing_cells(toy_dir, toy_model, tmp_path):
    _base(tmp_path, toy_dir, toy_model)
    sweep = _toml(tmp_path / "sweep.toml", {"grid": {"seed": [0, 1, 2]}}, base="base.toml", workers=1)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "probes.cli", "sweep", str(sweep), "--out", str(out)]
    env = _env()
    first = subprocess.Popen(command, cwd=tmp_path, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not list(out.glob("cells/*/results.json")) and first.poll() is None:
            time.sleep(0.2)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the driver and the Ray it started, mid-sweep
        first.wait()
    finished = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("cells/*/results.json")}
    assert 1 <= len(finished) < 3 and not (out / "sweep.json").exists()
    assert subprocess.run(command, cwd=tmp_path, env=env, capture_output=True).returncode == 0
    summary = json.loads((out / "sweep.json").read_text())
    status = {c["name"]: c["status"] for c in summary["cells"]}
    assert all(status[name] == "complete" for name in finished)
    assert sorted(status.values()).count("done") == 3 - len(finished)
    # the complete cells were skipped, not rewritten
    assert all((out / "cells" / name / "results.json").stat().st_mtime_ns == t for name, t in finished.items())


def _env(**extra: str) -> dict[str, str]:
    """A subprocess's environment: this checkout importable, no Ray settings this process picked up (an embedded
    ray.init sets RAY_AUTH_MODE here), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ADDRESS")}
    return env | {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))} | extra


@pytest.fixture(scope="module")
def cluster():
    """A cluster started the documented way, `ray start --head`, with a token here: Ray >= 2.59 then turns token
    authentication on by itself (the case that refused our driver). In its own temp dir, so an embedded ray.init
    elsewhere on this machine does not find it, and its own session, so teardown stops exactly its processes
    (`ray stop` would stop every Ray on the machine). Yields (address, the environment that holds its token)."""
    folder = Path(tempfile.mkdtemp(prefix="probes-ray-", dir="/tmp"))  # short: Ray's socket paths are length-limited
    token = folder / "auth_token"
    token.write_text(secrets.token_hex(32))
    env, port = _env(RAY_AUTH_TOKEN_PATH=str(token)), _closed_port()
    command = [str(Path(sys.executable).with_name("ray")), "start", "--head", f"--port={port}", "--num-cpus=2",
               f"--temp-dir={folder / 'ray'}", "--include-dashboard=false", "--disable-usage-stats"]
    log = folder / "start.log"
    with log.open("w") as out:  # a file, not a pipe: the daemons it leaves running inherit it
        head = subprocess.Popen(command, env=env, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
    try:
        if head.wait() != 0:
            pytest.fail(f"`ray start --head` failed here (exit {head.returncode}): {log.read_text()[-2000:]}")
        yield f"127.0.0.1:{port}", env
    finally:
        _stop_group(head.pid)
        shutil.rmtree(folder, ignore_errors=True)


def _stop_group(pgid: int) -> None:
    """Stop every process of one process group: TERM, then KILL what is left after 5 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
        for _ in range(25):
            time.sleep(0.2)
            os.killpg(pgid, 0)  # raises once the group is empty
        os.killpg(pgid, signal.SIGKILL)


def test_sweep_joins_a_ray_start_cluster_and_equals_the_embedded_run(cluster, swept, tmp_path):
    address, env = cluster
    folder, _ = swept
    sweep = _toml(tmp_path / "sweep.toml", {"grid": {"seed": [0, 1]}}, base=str(folder / "base.toml"))
    command = [sys.executable, "-m", "probes.cli", "sweep", str(sweep), "--out", str(tmp_path / "out")]
    done = subprocess.run([*command, "--address", address], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "out" / "sweep.json").read_text())["ray"] == address
    for seed in (0, 1):
        _assert_same_run(read_run(tmp_path / "out" / "cells" / f"seed{seed}"),
                         read_run(folder / "out" / "cells" / f"seed{seed}-dstprevious"))


def test_refused_token_is_one_line_exit_2_nothing_written(cluster, toy_dir, toy_model, tmp_path):
    address, env = cluster
    _base(tmp_path, toy_dir, toy_model)
    sweep = _toml(tmp_path / "sweep.toml", {"grid": {"seed": [0]}}, base="base.toml")
    # another token than the cluster's; Ray retries a refused join ~20 times, a second apart; 2 tries are enough here
    env = env | {"RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_gcs_server_port_wait_time_s": "2"}
    command = [sys.executable, "-m", "probes.cli", "sweep", str(sweep), "--out", str(tmp_path / "out")]
    done = subprocess.run([*command, "--address", address], env=env, capture_output=True, text=True)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"could not join the Ray cluster at {address}: the cluster refused this machine's authentication" in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.fixture
def not_ray():
    """The address of a port where something other than Ray answers (an HTTP/1 server's reply to anything)."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = server.accept()
            with conn:
                conn.recv(64)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    server.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("tables", "args", "message"),
    [
        ({"grid": {"seeds": [0, 1]}}, [], "unknown field(s) seeds in [grid]"),
        ({}, [], "[grid] is empty"),
        ({"grid": {"seed": []}}, [], "[grid] seed must be a non-empty list"),
        ({"grid": {"n": [12, 0]}}, [], "cell n0: n must be a positive whole number"),
        ({"grid": {"seed": [0]}}, ["--address", f"127.0.0.1:{_closed_port()}"], "no Ray cluster answers at 127.0.0.1"),
        ({"grid": {"seed": [0]}}, ["--address", "NOT_RAY"], "but not as a Ray cluster does (no gRPC reply)"),
    ],
)
def test_bad_sweep_is_one_line_exit_2_nothing_written(toy_dir, toy_model, tmp_path, capsys, not_ray, tables, args,
                                                      message):
    _base(tmp_path, toy_dir, toy_model)
    sweep = _toml(tmp_path / "sweep.toml", tables, base="base.toml")
    args = [not_ray if a == "NOT_RAY" else a for a in args]
    assert cli.main(["sweep", str(sweep), "--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "out").exists()


def _entry(verdicts: list[str], pooled: str | None) -> ClaimStability:
    claim = ClaimResult(Claim((0, 2), "end", "previous"), verdicts[0], "", {}, Thresholds())
    cells = [CellClaim(f"c{i}", v, Estimate(0.5, 0.4, 0.6)) for i, v in enumerate(verdicts)]
    return ClaimStability("m", "t", claim, {}, "edge_knockout", cells, pooled_verdict=pooled)


@pytest.mark.parametrize(
    ("verdicts", "pooled", "label", "split"),
    [
        (["supported"] * 9 + ["refuted"], "supported", "stable", "supported 9/10, refuted 1/10"),
        (["supported"] * 8 + ["refuted"] * 2, "supported", "unstable", "supported 8/10, refuted 2/10"),
        (["supported"] * 10, "attention_only", "unstable", "supported 10/10"),  # the pooled interval disagrees
        (["supported"] * 8 + [NOT_SELECTED] * 2, "supported", "unstable", f"supported 8/10, {NOT_SELECTED} 2/10"),
        (["refuted"] * 10, None, "stable", "refuted 10/10"),  # nothing to pool (an old cell): the share decides
    ],
)
def test_stability_label_needs_ninety_percent_and_the_pooled_verdict(verdicts, pooled, label, split):
    entry = _entry(verdicts, pooled)
    assert (entry.label, entry.split) == (label, split)

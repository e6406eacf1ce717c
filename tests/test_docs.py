"""The documentation: the site builds with every link and anchor checked, reads offline, and the README's
quickstart runs as printed."""

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

import probes
from probes.claims import VERDICTS

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def remote_asset() -> re.Pattern[str]:
    """The site's own offline check, from docs/hooks.py (mkdocs loads it by path: it is no package)."""
    return runpy.run_path(str(ROOT / "docs" / "hooks.py"))["REMOTE_ASSET"]


def quickstart() -> str:
    """The first Python block under the README's "Quickstart" heading."""
    section = README.read_text(encoding="utf-8").split("\n## Quickstart\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_site_builds_strict_and_reads_offline(tmp_path):
    site = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, check=False, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert build.returncode == 0, build.stderr[-3000:]
    pages = sorted(site.rglob("*.html"))
    assert (site / "index.html").exists() and (site / "api" / "claims.html").exists()
    assert "probes.evaluate" in (site / "api" / "claims.html").read_text(encoding="utf-8")  # docstrings rendered
    assert 'id="quickstart"' in (site / "index.html").read_text(encoding="utf-8")  # the README is the front page
    check = remote_asset()
    remote = [f"{p.relative_to(site)}" for p in pages if check.search(p.read_text("utf-8"))]
    assert not remote, remote[:5]  # the build's own check (a warning, so strict fails) missed these


def test_the_offline_check_catches_a_cdn_script():
    check = remote_asset()
    assert check.search('<script src="https://unpkg.com/iframe-worker/shim"></script>')
    assert check.search("<link rel=stylesheet href=//fonts.example.com/x.css>")
    assert not check.search('<script src="../assets/iframe-worker/shim.js"></script>')
    assert not check.search('<a href="https://ai.google.dev/gemma/terms">terms</a>')  # a link is no fetch


@pytest.mark.real
def test_readme_quickstart_runs(gemma, monkeypatch, capsys):
    """Every line of the quickstart, on the session's Gemma (the same packaged load, not a second copy in memory)."""
    code = quickstart()
    assert 'probes.load_model("gemma-3-270m")' in code
    monkeypatch.setattr(probes, "load_model", lambda name, device="cpu": gemma, raising=False)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)  # noqa: S102 (the README's own code, run as printed)

    result = scope["result"]
    verdict, sentence = capsys.readouterr().out.splitlines()[:2]
    assert verdict == result.verdict and verdict in VERDICTS
    assert sentence == result.sentence.splitlines()[0]
    frame = result.to_frame()
    assert frame[["layer", "head", "verdict"]].values.tolist() == [[7, 0, result.verdict]]

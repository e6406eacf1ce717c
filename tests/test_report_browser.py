"""The report works in a real browser, offline: every plot renders, nothing is fetched, hostile text stays text.

Headless Chromium opens the page behind a proxy that refuses every connection and writes a net log; the DOM it
dumps after the scripts ran is what a reader would see.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess

import pytest

from probes.report.render import render
from probes.run.rundir import RunResults
from test_report import TITLE_ATTACK, Page, synthetic_run

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--proxy-server=127.0.0.1:9",  # nothing listens there: any request the page makes fails, and is logged
    "--virtual-time-budget=5000",  # let plotly finish drawing before the DOM is dumped
]
BROWSER_INITIATED = "not an origin"  # net-log initiator of Chromium's own traffic (updates, accounts), not the page's


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed but CI is set: `make` installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium); CI installs it and runs this test")
    return path


@pytest.fixture(scope="module")
def browsed(tmp_path_factory) -> tuple[RunResults, str, str, list[dict]]:
    """(the run, page source, DOM after the scripts ran, parameters of every URL request in the net log)."""
    browser = chromium()
    out = tmp_path_factory.mktemp("run")
    run = synthetic_run(out)
    page = render(out)
    net_log = tmp_path_factory.mktemp("net-log") / "net-log.json"
    profile = tmp_path_factory.mktemp("profile")
    command = [browser, *FLAGS, f"--user-data-dir={profile}", f"--log-net-log={net_log}", "--dump-dom", page.as_uri()]
    try:
        dom = subprocess.run(command, capture_output=True, text=True, timeout=45, check=True).stdout
    except subprocess.TimeoutExpired:
        pytest.fail("chromium did not finish the page in 45 s; a modal dialog (an injected alert) would block it so")
    log = json.loads(net_log.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    requests = [e["params"] for e in log["events"] if e["type"] == start_job and "url" in e.get("params", {})]
    return run, page.read_text(encoding="utf-8"), dom, requests


def test_every_figure_is_drawn(browsed):
    run, source, dom, _ = browsed
    drawn = {}
    for fig_id, fig in Page(source).figures().items():
        # each figure div sits alone in a <figure>: what plotly drew for it ends at </figure>
        match = re.search(rf'<div id="{fig_id}" class="([^"]*)">(.*?)</figure>', dom, re.S)
        assert match and "js-plotly-plot" in match.group(1), f"{fig_id} was not handed to plotly"
        assert 'class="main-svg"' in match.group(2), f"{fig_id} has no plot"
        drawn[fig_id] = match.group(2)
        heatmaps = sum(trace["type"] == "heatmap" for trace in fig["data"])
        assert drawn[fig_id].count('<g class="hm"><image') == heatmaps, f"{fig_id} lacks heatmap images"
    # a heatmap per panel measure and per probe target, the scatter, one figure per example prompt
    panels = sum(m.panel for m in run.evidence.values()) + run.probes["target"].nunique()
    assert len(drawn) == panels + 1 + len(run.examples)
    # the scatter has one point per head with both estimates, each carrying its interval for the hover
    n_points = len(run.heads.dropna(subset=["attention", "effect_z"]))
    assert drawn["fig-scatter"].count('class="point plotly-customdata"') == n_points


def test_page_makes_no_network_request(browsed):
    _, _, dom, requests = browsed
    assert "js-plotly-plot" in dom  # the page did load and run
    from_page = [r["url"] for r in requests if r.get("initiator") != BROWSER_INITIATED]
    assert from_page == [], f"the report fetched {from_page}"


def test_hostile_prompt_text_is_shown_as_text_and_never_runs(browsed):
    _, source, dom, _ = browsed

    def title(html: str) -> str:
        return re.search(r"<head>.*?<title>([^<]*)</title>", html, re.S).group(1)

    assert title(dom) == title(source)  # the hostile prompts try to set document.title: none of them ran
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    assert not [a for tag, a in Page(dom).attrs if tag == "img" and a.get("src") == "x"]


HOSTILE = f"<script>{TITLE_ATTACK}</script><img src=x onerror=\"{TITLE_ATTACK}\">"


def test_hostile_names_in_results_json_stay_text(tmp_path):
    """Every string the report takes from results.json (title, task, model, command, claim roles and sentences,
    the rule, versions) may come from a hostile file: none of them runs in the browser."""
    browser = chromium()
    synthetic_run(tmp_path)
    results = tmp_path / "results.json"
    d = json.loads(results.read_text(encoding="utf-8"))
    d |= {"title": HOSTILE, "task": HOSTILE, "command": HOSTILE, "verdict_rule": [HOSTILE],
          "package_versions": {HOSTILE: HOSTILE}, "model": d["model"] | {"name": HOSTILE}}
    for claim in d["claims"]:
        claim |= {"src": HOSTILE, "dst": HOSTILE, "foil": HOSTILE, "sentence": HOSTILE}
    results.write_text(json.dumps(d), encoding="utf-8")
    page = render(tmp_path)
    profile = tmp_path / "profile"
    dom = subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=45, check=True).stdout
    assert "js-plotly-plot" in dom  # the page loaded and its scripts ran
    def title(text: str) -> str:
        return html.unescape(re.search(r"<title>([^<]*)</title>", text).group(1))

    assert title(dom) == title(page.read_text(encoding="utf-8"))  # the hostile text is the title: none of it ran
    assert not [a for tag, a in Page(dom).attrs if tag == "img" and a.get("src") == "x"]
    assert dom.count("&lt;script&gt;document.title='pwned'&lt;/script&gt;") >= 4  # shown, as text

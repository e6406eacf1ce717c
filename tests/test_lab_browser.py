"""JupyterLab as a user opens it (`make lab`): it serves on localhost, notebook 01 opens, and a cell that displays a
`ClaimResult` shows its HTML card, in headless Chromium with every non-local request refused.

The lab is started through the Makefile's own `lab` target (pointed at a scratch folder holding a copy of notebook
01 and a small notebook executed on the planted toy), so the test checks the command the README names.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from test_notebooks import NOTEBOOKS, execute, kernel_specs  # noqa: F401  (kernel_specs is a fixture)
from test_report_browser import FLAGS, chromium

REPO = Path(__file__).resolve().parent.parent
TOKEN = "probes-lab-test"
START_TIMEOUT_S = 120
CLAIM_CELL = """\
import probes
from probes import tasks, toy
planted = toy.build()
prompts = tasks.pronoun_prompts(planted, 12)
probes.evaluate(planted.model, prompts, probes.Claim(planted.heads.antecedent, src="pronoun", dst="antecedent"))"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dom_of(url: str, profile: Path) -> str:
    """The DOM after JupyterLab's scripts ran (a longer virtual-time budget than a static report needs)."""
    flags = [f for f in FLAGS if not f.startswith("--virtual-time-budget")] + ["--virtual-time-budget=30000"]
    command = [chromium(), *flags, f"--user-data-dir={profile}", "--dump-dom", url]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout


@pytest.fixture(scope="module")
def lab(tmp_path_factory, kernel_specs):  # noqa: F811
    """(base URL, folder) of a running `make lab` on a scratch folder."""
    folder = tmp_path_factory.mktemp("lab")
    shutil.copy(NOTEBOOKS / "01_coreference.ipynb", folder)
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(CLAIM_CELL)]), folder / "claim.ipynb")
    nbformat.write(execute(folder / "claim.ipynb", kernel_specs)[0], folder / "claim.ipynb")
    port = free_port()
    args = f"--no-browser --port={port} --IdentityProvider.token={TOKEN}"
    server = subprocess.Popen(
        ["make", "-s", "lab", f"LAB_DIR={folder}", f"LAB_ARGS={args}"], cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={TOKEN}", timeout=5) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"`make lab` did not serve on {base}: {server.stderr.read()[-2000:] if server.stderr else ''}")
            time.sleep(1)
        yield base, folder
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_notebook_01_opens(lab, tmp_path):
    base, _ = lab
    dom = dom_of(f"{base}/lab/tree/01_coreference.ipynb?token={TOKEN}", tmp_path)
    assert 'lm-TabBar-tabLabel">01_coreference.ipynb<' in dom, "notebook 01 did not open in a tab"
    assert "Coreference in Gemma-3-270m: which head links" in dom, "notebook 01's title cell was not rendered"


def test_a_claim_result_renders_its_html(lab, tmp_path):
    base, folder = lab
    card = nbformat.read(folder / "claim.ipynb", as_version=4).cells[0].outputs[-1]["data"]["text/html"]
    headline = card.split("<b>", 1)[1].split("</b>", 1)[0]  # "head 1.1: <verdict>"
    dom = dom_of(f"{base}/lab/tree/claim.ipynb?token={TOKEN}", tmp_path)
    rendered = dom.split('data-mime-type="text/html">', 1)
    assert len(rendered) == 2, "no HTML output was rendered"
    assert f"<b>{headline}</b>" in rendered[1].split("jp-OutputArea-child", 1)[0]
    assert "<table" in rendered[1] and "edge_knockout</td>" in rendered[1]

"""mkdocs hooks: the site's front page is the README, and the notebooks are rendered as the test suite ran them.

* ``index.md`` is ``README.md``: the README links into ``docs/`` as GitHub shows it, so its ``](docs/`` links are
  rewritten to site-relative ones here, and strict mode then checks every one of them.
* ``notebooks/NAME.ipynb`` pages come from ``build/notebooks/`` (the executed copies ``tests/test_notebooks.py``
  saves; ``make docs`` runs that test first when a copy is missing), else from ``notebooks/`` without outputs.
  The hook runs before mkdocs-jupyter's own ``on_files`` (higher priority) so the plugin renders these files.
* Every page must read offline: a tag that would fetch from another host (a CDN script, a web font, a stylesheet)
  is a warning, which fails the strict build. Plotly's notebook renderer puts a MathJax CDN tag beside every
  figure (for LaTeX in labels, which the kit's figures do not use; plotly.js itself is embedded): it is dropped.
* The API pages render docstrings as Markdown; their Sphinx roles (``:class:`X```) would show as ``:class:X``, so
  the role prefix is dropped and the name stays as code.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
EXECUTED = ROOT / "build" / "notebooks"
log = logging.getLogger("mkdocs.hooks.probes")
REMOTE_ASSET = re.compile(r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=[\"']?(?:https?:)?//", re.IGNORECASE)
PLOTLY_MATHJAX = re.compile(r'<script src="https://cdnjs\.cloudflare\.com/ajax/libs/mathjax/[^"]*"></script>')
SPHINX_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):(?=<code>)")


@event_priority(100)
def on_files(files: Files, config) -> Files:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    files.append(File.generated(config, "index.md", content=readme.replace("](docs/", "](")))
    for source in sorted(NOTEBOOKS.glob("*.ipynb")):
        executed = EXECUTED / source.name
        if not executed.exists():
            log.info("notebooks/%s: no executed copy in build/notebooks/, rendered without outputs", source.name)
        root = EXECUTED.parent if executed.exists() else ROOT  # both hold notebooks/NAME.ipynb
        files.append(File(f"notebooks/{source.name}", str(root), config["site_dir"], config["use_directory_urls"]))
    return files


def on_page_content(html: str, page, config, files) -> str:
    return SPHINX_ROLE.sub("", html)


def on_post_page(output: str, page, config) -> str:
    output = PLOTLY_MATHJAX.sub("", output)
    for match in REMOTE_ASSET.finditer(output):
        log.warning("%s fetches from another host, so it does not read offline: %s", page.file.src_uri, match.group(0))
    return output

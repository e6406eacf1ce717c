"""The headline findings hold: every analysis in ``findings/`` re-run at its recorded size and seed gives the same
verdicts, labels and task gates, and every estimate stays inside its recorded interval (``findings/measure.py``
writes them with ``make findings``; docs/findings.md is rendered from them)."""

import copy
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "findings"))
import measure  # noqa: E402

FIXTURES = {"gemma-3-270m": "gemma", "smollm2-135m": "smollm2"}


def recorded(name: str) -> dict:
    return json.loads(measure.path(name).read_text())


@pytest.mark.real
@pytest.mark.findings
@pytest.mark.parametrize("name", list(measure.BY_NAME))
def test_finding_holds(name: str, request: pytest.FixtureRequest) -> None:
    finding = recorded(name)
    analysis = measure.BY_NAME[name]
    fresh = measure.run(analysis, request.getfixturevalue(FIXTURES[analysis.model]), finding["seed"], finding["n"])
    moved = measure.differences(finding, fresh)
    assert not moved, f"{finding['title']} ({finding['n']} prompts, seed {finding['seed']}):\n" + "\n".join(moved)


def test_every_analysis_is_recorded_at_its_size() -> None:
    """``make findings`` was run after the last change of an analysis's size or claims."""
    for analysis in measure.ANALYSES:
        finding = recorded(analysis.name)
        assert (finding["model"], finding["n"], finding["seed"]) == (analysis.model, analysis.n, 0), analysis.name


def test_a_moved_finding_is_named() -> None:
    """Each way a finding can move gives one line naming the model and the claim."""
    finding = recorded("previous_token_gemma")
    assert measure.differences(finding, finding) == []
    fresh = copy.deepcopy(finding)
    first, second = fresh["items"][0], fresh["items"][1]
    first["outcome"] = "refuted"
    name, estimate = next(iter(second["estimates"].items()))
    estimate["value"] = estimate["ci_high"] + 0.01
    lines = measure.differences(finding, fresh)
    assert lines == [
        f"Gemma: {first['claim']}: verdict was '{finding['items'][0]['outcome']}', now 'refuted'",
        (f"Gemma: {second['claim']}: {name} {estimate['value']:+.3f} left its recorded interval "
         f"[{estimate['ci_low']:+.3f}, {estimate['ci_high']:+.3f}]"),
    ]
    fresh["items"] = fresh["items"][1:]
    assert measure.differences(finding, fresh)[0] == f"Gemma: {first['claim']}: not measured any more"


def test_the_docs_page_is_rendered_from_the_findings() -> None:
    """docs/findings.md is what the template makes of findings/*.json: no figure edited by hand."""
    assert measure.DOCS.read_text() == measure.render(), "docs/findings.md is stale or edited: run make findings"

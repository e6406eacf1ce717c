"""The notebooks run top to bottom on the packaged models, show figures and reach verdicts.

Each notebook is executed in a fresh kernel of *this* interpreter (a throwaway kernelspec pointing at
``sys.executable``, so a user-level "python3" kernel elsewhere can never be picked up instead), from the
notebooks directory so relative paths such as ``my_pairs.jsonl`` resolve. The committed notebooks are never
written: a notebook that passes is saved, executed, to ``build/notebooks/`` (gitignored, written atomically), where
``make docs`` renders it with its figures.
"""

import json
import re
import sys
import time
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from probes.claims import VERDICTS
from probes.core.io import write_text

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
EXECUTED = NOTEBOOKS.parent / "build" / "notebooks"  # the docs site renders these (mkdocs.yml, docs/hooks.py)
NOTEBOOK_FILES = ["01_coreference.ipynb", "02_previous_token.ipynb", "03_your_own_claim.ipynb", "04_position_content.ipynb"]
CELL_TIMEOUT_S = 600  # the slowest cell (two claim evaluations) took up to ~130 s on 2 busy cores
KERNEL = "probes-notebook-test"
VERDICT_TAG = "verdict"  # cells with this tag print verdict sentences
VERDICT_WORD = re.compile(rf"\b({'|'.join(VERDICTS)})\b")
SENTENCE_VERDICT = re.compile(rf"\]: ({'|'.join(VERDICTS)})$", re.MULTILINE)  # a result's sentence ends "[scope]: verdict"
# The verdict each notebook's reading ("When we ran this notebook ...") states for each result it prints, in order.
# 04's reading states no verdict (its labels are checked below instead): any verdict word passes there.
READ_VERDICTS = {
    "01_coreference.ipynb": ["inconclusive", "effect_only"],  # top attention 7.0, top effect 10.3
    "02_previous_token.ipynb": ["supported", "attention_only"],  # most needed 16.0, least needed 1.2
    "03_your_own_claim.ipynb": ["effect_only", "supported", "supported"],  # as stated; revised: my pairs, held out
}
LABELS_TAG = "labels"  # cells with this tag print "KIND head L.H: LABEL ..." for the heads a notebook walks through
WALKED_LABEL = re.compile(r"^(\w+) head (\d+\.\d+): (\w+)", re.MULTILINE)
WALKED = {"04_position_content.ipynb": {"positional", "content"}}  # the kinds of head each notebook walks through


@pytest.fixture(scope="module")
def kernel_specs(tmp_path_factory) -> KernelSpecManager:
    """A kernelspec manager that knows one kernel: ipykernel running in the interpreter running the tests."""
    kernels = tmp_path_factory.mktemp("kernels")
    (kernels / KERNEL).mkdir()
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "probes (test interpreter)",
        "language": "python",
    }
    (kernels / KERNEL / "kernel.json").write_text(json.dumps(spec))
    return KernelSpecManager(kernel_dirs=[str(kernels)], ensure_native_kernel=False)


def execute(path: Path, kernel_specs: KernelSpecManager) -> tuple[nbformat.NotebookNode, float]:
    """Run every cell in order; a cell that raises fails the test with its traceback (nbclient's default)."""
    nb = nbformat.read(path, as_version=4)
    manager = KernelManager(kernel_name=KERNEL, kernel_spec_manager=kernel_specs)
    client = NotebookClient(nb, km=manager, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    return nb, time.perf_counter() - start


def outputs(cell) -> list:
    return cell.get("outputs", []) if cell.cell_type == "code" else []


def is_figure(output) -> bool:
    """A rendered plotly figure (its HTML calls Plotly.newPlot) or an image."""
    if output.output_type not in ("display_data", "execute_result"):
        return False
    data = output.get("data", {})
    return "Plotly.newPlot" in data.get("text/html", "") or any(key.startswith("image/") for key in data)


def printed(cell) -> str:
    return "".join(o.get("text", "") for o in outputs(cell) if o.output_type == "stream" and o.name == "stdout")


def printed_verdicts(cells) -> list[str]:
    """The verdict of every result sentence the cells printed, in order."""
    return [verdict for cell in cells for verdict in SENTENCE_VERDICT.findall(printed(cell))]


def test_the_verdict_check_reads_each_sentence_s_own_verdict():
    """Only a sentence's closing verdict counts, not a verdict word inside it (a sentence explains the others)."""
    text = ("[top attention] head 7.0 attends ... would be attention_only if the interval ... [12 held-out prompts]: "
            "inconclusive\n\n[top effect] head 10.3 ... [12 held-out prompts]: effect_only\n\n")
    cell = nbformat.v4.new_code_cell(outputs=[nbformat.v4.new_output("stream", name="stdout", text=text)])
    assert printed_verdicts([cell]) == READ_VERDICTS["01_coreference.ipynb"]
    assert printed_verdicts([cell]) != READ_VERDICTS["02_previous_token.ipynb"]


def label_mismatches(text: str, kinds: set[str]) -> list[str]:
    """What is wrong with a labels cell's printout: a walked-through head of each kind, labelled as that kind."""
    found = {kind: (head, label) for kind, head, label in WALKED_LABEL.findall(text)}
    missing = [f"no {kind} head printed" for kind in sorted(kinds - set(found))]
    return missing + [f"{kind} head {head} is labelled {label}" for kind, (head, label) in found.items() if label != kind]


def test_the_labels_check_catches_a_head_labelled_otherwise():
    walked = WALKED["04_position_content.ipynb"]
    good = "positional head 2.3: positional on the held-out prompts\ncontent head 7.0: content on the held-out prompts\n"
    assert label_mismatches(good, walked) == []
    assert label_mismatches(good.replace(": positional", ": mixed"), walked) == ["positional head 2.3 is labelled mixed"]
    assert label_mismatches(good.replace(": content", ": neither"), walked) == ["content head 7.0 is labelled neither"]
    assert label_mismatches(good.splitlines()[0], walked) == ["no content head printed"]


def test_notebooks_are_committed_without_outputs():
    for name in NOTEBOOK_FILES:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        for cell in nb.cells:
            assert not outputs(cell) and cell.get("execution_count") is None, f"{name}: clear outputs before committing"


@pytest.mark.real
@pytest.mark.parametrize("name", NOTEBOOK_FILES)
def test_notebook_runs_shows_figures_and_reaches_verdicts(name, kernel_specs, record_property):
    nb, seconds = execute(NOTEBOOKS / name, kernel_specs)
    record_property("seconds", round(seconds, 1))
    print(f"{name}: executed in {seconds:.0f} s")

    errors = [o for cell in nb.cells for o in outputs(cell) if o.output_type == "error"]
    assert not errors, f"{name}: {errors[0].ename}: {errors[0].evalue}"
    assert any(is_figure(o) for cell in nb.cells for o in outputs(cell)), f"{name}: no figure was displayed"

    verdict_cells = [cell for cell in nb.cells if VERDICT_TAG in cell.metadata.get("tags", [])]
    assert verdict_cells, f"{name}: no cell is tagged '{VERDICT_TAG}'"
    for cell in verdict_cells:
        text = printed(cell)
        assert VERDICT_WORD.search(text), f"{name}: a verdict cell printed no verdict: {text!r}"
    if name in READ_VERDICTS:
        verdicts = printed_verdicts(verdict_cells)
        assert verdicts == READ_VERDICTS[name], f"{name}: the reading states {READ_VERDICTS[name]}, the run gave {verdicts}"

    if name in WALKED:
        labels = "".join(printed(cell) for cell in nb.cells if LABELS_TAG in cell.metadata.get("tags", []))
        assert not label_mismatches(labels, WALKED[name]), f"{name}: {label_mismatches(labels, WALKED[name])}"

    write_text(EXECUTED / name, nbformat.writes(nb))

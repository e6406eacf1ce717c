"""Property: whatever spec file, prompt file or run directory it is given, the CLI succeeds or exits 2 with exactly
one line on stderr, never a traceback, and ``probes report`` never leaves a page from a run it refused.

Inputs are valid ones (on the planted toy model with a word-level tokenizer, so everything stays fast) with random
mutations: wrong types, missing and unknown keys, truncation, odd unicode, huge values. ``make test`` runs a few
examples of each; set ``PROBES_FUZZ_EXAMPLES`` for more.
"""

import contextlib
import io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from probes import cli

from test_safety import RECORD, spec_file, toy_with_tokenizer

EXAMPLES = int(os.environ.get("PROBES_FUZZ_EXAMPLES", "12"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize="PROBES_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

ODD_TEXT = st.text(st.characters(codec="utf-8") | st.sampled_from(["\x00", "\u202e", "\ufeff", "\ud800", "\n", '"', "\\"]),
                   max_size=12)
SCALARS = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=0) | st.integers(min_value=10**8, max_value=2**70),  # never a real n
    st.floats(allow_nan=True, allow_infinity=True),
    ODD_TEXT,
)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ODD_TEXT, inner, max_size=2),
                      max_leaves=6)


def toml_value(v) -> str:
    """A TOML rendering of any JSON-like value (what a user could have typed)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


def run_cli(*args: str) -> tuple[int, list[str]]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(list(args))
    return code, err.getvalue().strip().splitlines()


def assert_clean_outcome(code: int, err: list[str]) -> None:
    event(f"exit {code}")  # --hypothesis-show-statistics: how many examples ran through, how many were refused
    assert code in (0, 2), (code, err)
    if code == 2:
        assert len(err) == 1 and err[0].startswith("probes: error: "), err


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    return toy_with_tokenizer(tmp_path_factory.mktemp("models") / "toy")


def mutate_text(data, text: str) -> str:
    how = data.draw(st.sampled_from(["keep", "truncate", "insert"]))
    at = data.draw(st.integers(0, len(text)))
    if how == "truncate":
        return text[:at]
    if how == "insert":
        return text[:at] + data.draw(ODD_TEXT) + text[at:]
    return text


@FUZZ
@given(data=st.data())
def test_any_spec_file_is_run_or_refused_in_one_line(toy_dir, data):
    fields = {"model": str(toy_dir), "task": "induction", "n": 12, "seed": 0, "src": "induction_target",
              "dst": "previous", "direction": "noising", "claims": [[0, 2]], "title": "t",
              "thresholds": {"effect": 0.1}, "examples": 1}
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from(sorted(fields) + ["colour", "foil", "compositions", "probe_targets"]))
        if data.draw(st.booleans()):
            fields.pop(key, None)
        else:
            fields[key] = data.draw(VALUES)
    text = "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in fields.items())
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "spec.toml"
        spec.write_text(mutate_text(data, text), encoding="utf-8", errors="surrogatepass")
        assert_clean_outcome(*run_cli("run", str(spec), "--out", str(Path(tmp) / "run")))


def record_mutations(data) -> dict | str:
    record = json.loads(json.dumps(RECORD))
    how = data.draw(st.sampled_from(["keep", "drop", "retype", "text", "long", "role"]))
    key = data.draw(st.sampled_from(sorted(record) + ["labels", "group"]))
    if how == "drop":
        record.pop(key, None)
    elif how == "retype":
        record[key] = data.draw(VALUES)
    elif how == "text":
        record[key] = data.draw(ODD_TEXT)
    elif how == "long":
        record["clean"] = " ".join(["Mary and John went to the park"] * 800) + " she"
        record["corrupt"] = record["clean"][:-3] + "he"
    elif how == "role":
        record["roles"] = {"pronoun": data.draw(ODD_TEXT)}
    return record


@FUZZ
@given(data=st.data())
def test_any_prompt_file_is_run_or_refused_in_one_line(toy_dir, data):
    records = [record_mutations(data) for _ in range(data.draw(st.integers(1, 3)))]
    lines = [json.dumps(r) for r in records] * 4  # repeated lines too: the note goes to stdout, not stderr
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "p.jsonl"
        prompts.write_text(mutate_text(data, "\n".join(lines) + "\n"), encoding="utf-8", errors="surrogatepass")
        spec = spec_file(Path(tmp) / "spec.toml", toy_dir, task=None, prompts=str(prompts), src="pronoun",
                         dst="antecedent", direction="denoising")
        assert_clean_outcome(*run_cli("run", str(spec), "--out", str(Path(tmp) / "run")))


@pytest.fixture(scope="module")
def good_run(toy_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    assert cli.main(["run", str(spec_file(out.parent / "a.toml", toy_dir)), "--out", str(out)]) == 0
    return out


def mutate_json(data, value):
    """``value`` with one random place (a key of an object, an item of a list, or the whole) replaced or removed."""
    if isinstance(value, dict) and value and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(value)))
        if data.draw(st.booleans()):
            return {k: v for k, v in value.items() if k != key}
        return value | {key: mutate_json(data, value[key])}
    if isinstance(value, list) and value and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(value) - 1))
        return value[:i] + [mutate_json(data, value[i])] + value[i + 1 :]
    return data.draw(VALUES | st.none())


@FUZZ
@given(data=st.data())
def test_any_run_directory_is_reported_or_refused_in_one_line(good_run, data):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        shutil.copytree(good_run, out)
        (out / "index.html").unlink()
        target = data.draw(st.sampled_from(sorted(p.name for p in out.iterdir())))
        if target == "results.json" and data.draw(st.booleans()):
            results = json.loads((out / target).read_text())
            (out / target).write_text(json.dumps(mutate_json(data, results)))
        else:
            raw = (out / target).read_bytes()
            (out / target).write_bytes(raw[: data.draw(st.integers(0, len(raw)))])
        code, err = run_cli("report", str(out))
        assert_clean_outcome(code, err)
        assert (out / "index.html").exists() == (code == 0)


# --- claims and sweep grids: what the spec alone decides is refused before any model loads -------------------------

# The refusals that need a loaded model (the spec alone cannot tell): a head past the model's layers or heads, a
# destination that sits after its source in these prompts. Any other refusal after a model load is a late one.
NEEDS_THE_MODEL = ("does not exist: the model has", "is not at or before source")
ROLE_WORDS = st.sampled_from(["induction_target", "end", "previous", "pronoun", "IO"]) | st.from_regex(r"\w{1,6}", fullmatch=True)
CLAIMS = st.builds("{}.{}: {} -> {}{}".format, st.integers(0, 3), st.integers(0, 9), ROLE_WORDS, ROLE_WORDS,
                   st.just("") | ROLE_WORDS.map(" vs {}".format))


@contextlib.contextmanager
def loads_counted():
    """The model loads of a run, counted: a refusal that could come from the spec alone must come with none."""
    from probes.run import pipeline

    loads, real = [], pipeline.load_model
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "load_model", lambda name, *a, **k: loads.append(name) or real(name, *a, **k))
        yield loads


def assert_refused_early(code: int, err: list[str], loads: list) -> None:
    assert_clean_outcome(code, err)
    if code == 2 and loads:
        assert any(words in err[0] for words in NEEDS_THE_MODEL), f"refused only after loading a model: {err[0]}"


@FUZZ
@given(data=st.data())
def test_any_claim_is_run_or_refused_before_the_model_loads(toy_dir, data):
    fields = {"model": str(toy_dir), "task": "induction", "n": 12, "src": data.draw(ROLE_WORDS),
              "dst": data.draw(ROLE_WORDS), "direction": "noising", "examples": 1, "pattern_patching": False,
              "claims": data.draw(st.lists(CLAIMS | st.sampled_from(["top_attention:1", "0.2: induction_target -> previous"]),
                                           min_size=1, max_size=2))}
    if data.draw(st.booleans()):
        fields["foil"] = data.draw(ROLE_WORDS)
    if data.draw(st.booleans()):
        fields["position_content"] = {"dst": data.draw(ROLE_WORDS), "filler": [5], "replacements": [6]}
    with tempfile.TemporaryDirectory() as tmp, loads_counted() as loads:
        spec = Path(tmp) / "spec.toml"
        spec.write_text(toml_text_of(fields), encoding="utf-8")
        code, err = run_cli("run", str(spec), "--out", str(Path(tmp) / "run"))
        assert_refused_early(code, err, loads)
        assert (Path(tmp) / "run").exists() == (code == 0)


def toml_text_of(fields: dict) -> str:
    tables = {k: v for k, v in fields.items() if isinstance(v, dict)}
    lines = [f"{json.dumps(k)} = {toml_value(v)}" for k, v in fields.items() if k not in tables]
    for name, table in tables.items():
        lines += [f"[{json.dumps(name)}]", *(f"{json.dumps(k)} = {toml_value(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"


@FUZZ
@given(data=st.data())
def test_any_sweep_grid_is_refused_up_front_or_every_cell_runs(toy_dir, data, monkeypatch):
    """A sweep's cells run in-process here, as a worker runs them (no Ray): a grid is refused in one line with nothing
    written, or each of its cells runs, or fails only for what the model alone could tell."""
    pytest.importorskip("ray")
    from probes.core.errors import ProbesError
    from probes.run.pipeline import run_analysis
    from probes.sweep import driver

    values = {"model": st.sampled_from([str(toy_dir), "no-such-model", "smollm2"]) | ODD_TEXT,
              "seed": st.integers(0, 2) | VALUES, "dst": ROLE_WORDS, "src": ROLE_WORDS, "foil": ROLE_WORDS,
              "claims": st.lists(CLAIMS, min_size=1, max_size=2), "colour": VALUES}
    keys = data.draw(st.lists(st.sampled_from(sorted(values)), min_size=1, max_size=2, unique=True))
    grid = {k: data.draw(st.lists(values[k], min_size=1, max_size=2)) for k in keys}
    with tempfile.TemporaryDirectory() as tmp, loads_counted() as loads:
        tmp = Path(tmp)
        spec_file(tmp / "base.toml", toy_dir, pattern_patching=False, examples=0)
        (tmp / "sweep.toml").write_text(toml_text_of({"base": "base.toml", "grid": grid}), encoding="utf-8")
        late = []

        def cells_in_process(sweep, out, address=None, command=""):
            for cell in sweep.cells:
                try:
                    run_analysis(cell.spec, tmp / "cells" / cell.name, command=command)
                except ProbesError as err:
                    late.append(str(err))
            return driver.SweepResult(Path(out), [], [])

        monkeypatch.setattr(driver, "run_sweep", cells_in_process)
        code, err = run_cli("sweep", str(tmp / "sweep.toml"), "--out", str(tmp / "out"))
        assert_clean_outcome(code, err)
        if code == 2:
            assert not loads and sorted(p.name for p in tmp.iterdir()) == ["base.toml", "sweep.toml"]
        for error in late:
            assert any(words in error for words in NEEDS_THE_MODEL), f"a cell was refused only after its model loaded: {error}"

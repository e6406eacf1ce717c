"""Never lose a user's files, never return a silently wrong verdict: --out, run directories, prompt sets, the
model cache, memory, fast errors and kill safety. Ground truth is construction (the planted toy model, files the
test wrote itself) or an independent run (an uninterrupted sweep)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models as token_models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from probes import cli, toy
from probes.core import memory
from probes.core.errors import ProbesError
from probes.core.io import atomic_dir
from probes.evidence.attention import role_attention
from probes.evidence.behaviour import behaviour
from probes.evidence.metric import read_off_resid
from probes.evidence.activations import harvest, harvest_bytes
from probes.evidence.patching import engine, patch_heads, reference_bytes
from probes.evidence.probing import antecedent_identity, probe_activations, probe_bytes
from probes.models import cache, loading
from probes.models.loading import load_model_dir, save_model_dir
from probes.models.toy import VOCAB
from probes.prompts import tasks
from probes.prompts.catalogue import TASK_ROLES, TEMPLATED
from probes.prompts.promptset import PromptSet
from probes.prompts.records import RepeatedLines
from probes.prompts.tasks.toy import pronoun_prompts
from probes.run.outdir import MARKER
from probes.run.rundir import read_run

REPO = Path(__file__).resolve().parents[1]
RECORD = {"clean": "Mary and John went to the park she", "corrupt": "Mary and John went to the park he",
          "answer": " Mary", "foil": " John", "roles": {"pronoun": "she", "antecedent": "Mary", "distractor": "John"}}


def toy_with_tokenizer(path: Path, vocab: list[str] = VOCAB) -> Path:
    """The planted toy model saved with a word-level tokenizer over ``vocab`` (one word, one id), so text prompts
    and role matching run on it without a real model."""
    save_model_dir(toy.build().model, path)
    tokenizer = Tokenizer(token_models.WordLevel({w.strip(): i for i, w in enumerate(vocab)}, unk_token="<bos>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<bos>", pad_token="<bos>", unk_token="<bos>").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    return toy_with_tokenizer(tmp_path_factory.mktemp("models") / "toy")


def spec_file(path: Path, model: Path, **fields) -> Path:
    fields = {"model": str(model), "task": "induction", "n": 12, "src": "induction_target", "dst": "previous",
              "direction": "noising", "claims": [[0, 2]]} | fields
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in fields.items() if v is not None))
    return path


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("probes: error: "), err
    return err[0]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# --- --out: a directory of other files is never written into; a run is replaced only whole ----------------------


def test_out_with_foreign_files_is_refused_and_left_untouched(toy_dir, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "prompts.jsonl").write_text(json.dumps(RECORD) + "\n")
    (mine / "probes.csv").write_text("keep\n")
    before = snapshot(mine)
    spec = spec_file(tmp_path / "a.toml", toy_dir)
    assert cli.main(["run", str(spec), "--out", str(mine)]) == 2
    assert "not written by `probes run`" in one_error_line(capsys)
    assert cli.main(["run", str(spec), "--prompts", str(mine / "prompts.jsonl"), "--out", str(mine), "--overwrite"]) == 2
    assert "not written by `probes run`" in one_error_line(capsys)
    assert snapshot(mine) == before


@pytest.mark.parametrize("where", ["file", "proc"])
def test_out_that_cannot_be_a_directory_is_one_line(toy_dir, tmp_path, capsys, where):
    out = tmp_path / "a-file" if where == "file" else Path("/proc/probes-cannot-write-here")
    if where == "file":
        out.write_text("mine")
    assert cli.main(["run", str(spec_file(tmp_path / "a.toml", toy_dir)), "--out", str(out)]) == 2
    assert str(out) in one_error_line(capsys)


def test_earlier_run_needs_overwrite_and_is_replaced_whole(toy_dir, tmp_path, capsys):
    spec, out = spec_file(tmp_path / "a.toml", toy_dir), tmp_path / "run"
    assert cli.main(["run", str(spec), "--out", str(out)]) == 0
    first = json.loads((out / "results.json").read_text())["run_id"]
    assert (out / "index.html").is_file() and json.loads((out / MARKER).read_text())["run_id"] == first
    capsys.readouterr()
    assert cli.main(["run", str(spec), "--out", str(out)]) == 2
    assert "--overwrite" in one_error_line(capsys)
    (out / "stray.txt").write_text("from an earlier run's user")
    assert cli.main(["run", str(spec), "--out", str(out), "--overwrite"]) == 0
    second = read_run(out)
    assert json.loads((out / "results.json").read_text())["run_id"] != first
    assert not (out / "stray.txt").exists() and second.n_prompts == 12
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".run.")] == []  # no scratch left


def test_a_crash_at_the_swap_leaves_the_old_run(toy_dir, tmp_path, monkeypatch, capsys):
    """The swap is the last step: a failure there (or anywhere before) leaves the earlier run, readable."""
    spec, out = spec_file(tmp_path / "a.toml", toy_dir), tmp_path / "run"
    assert cli.main(["run", str(spec), "--out", str(out)]) == 0
    before = snapshot(out)

    def crash(a, b):
        raise KeyboardInterrupt  # as if the process died at the rename

    monkeypatch.setattr("probes.core.io._exchange", crash)
    assert cli.main(["run", str(spec), "--out", str(out), "--overwrite"]) == 130
    assert snapshot(out) == before and read_run(out).n_prompts == 12
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".run.")] == []


def test_atomic_dir_swaps_in_one_step(tmp_path):
    final = tmp_path / "d"
    final.mkdir()
    (final / "old").write_text("old")
    with atomic_dir(final) as tmp:
        (tmp / "new").write_text("new")
        assert (final / "old").is_file()  # the old one stays until the body finished
    assert snapshot(final) == {"new": b"new"} and sorted(p.name for p in tmp_path.iterdir()) == ["d"]


# --- the run reader: one run's files only, a schema, one line naming the file and field -------------------------


@pytest.fixture(scope="module")
def good_run(toy_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    spec = spec_file(out.parent / "a.toml", toy_dir)
    assert cli.main(["run", str(spec), "--out", str(out)]) == 0
    return out


def _broken(good_run: Path, tmp_path: Path, change) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(good_run, out)
    change(out)
    return out


def _edit_results(edit):
    def change(out: Path) -> None:
        d = json.loads((out / "results.json").read_text())
        (out / "results.json").write_text(json.dumps(edit(d)))
    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_edit_results(lambda d: [d]), "format"),
        (_edit_results(lambda d: None), "format"),
        (_edit_results(lambda d: d | {"examples": [{"tokens": "abc", "patterns": {}}]}), "field examples[0].tokens"),
        (_edit_results(lambda d: d | {"claims": [{"verdict": "great", "sentence": ""}]}), "field claims[0]"),
        (_edit_results(lambda d: d | {"model": {**d["model"], "n_heads": "4"}}), "field model.n_heads"),
        (_edit_results(lambda d: d | {"run_id": "another"}), "names another run"),
        (lambda out: (out / "heads.parquet").write_bytes((out / "heads.parquet").read_bytes()[:100]), "heads.parquet"),
        (lambda out: (out / "prompts.jsonl").write_text("{not json\n"), "prompts.jsonl"),
        (lambda out: (out / "heads.csv").write_text("layer,head\n"), "heads.csv' is not the file this run wrote"),
    ],
)
def test_report_on_a_broken_run_is_one_line_and_writes_no_page(good_run, tmp_path, capsys, change, message):
    out = _broken(good_run, tmp_path, change)
    (out / "index.html").unlink()
    assert cli.main(["report", str(out)]) == 2
    assert message in one_error_line(capsys)
    assert not (out / "index.html").exists()


@pytest.fixture(scope="module")
def other_run(toy_dir, tmp_path_factory):
    """A second run, another seed: every file has the same name as good_run's, and none belongs to it (the same
    seed would write the same CSV and JSONL bytes, which no check can tell apart, nor needs to)."""
    out = tmp_path_factory.mktemp("runs") / "other"
    assert cli.main(["run", str(spec_file(out.parent / "a.toml", toy_dir, seed=1)), "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("name", ["heads.parquet", "per_prompt.parquet", "index.html", "heads.csv", "prompts.jsonl"])
def test_a_file_of_another_run_swapped_in_is_refused_naming_it(good_run, other_run, tmp_path, capsys, name):
    """Parquet tables and the page carry their run's id inside them; CSV and JSONL are caught by their sha256."""
    assert (other_run / name).is_file()
    out = _broken(good_run, tmp_path, lambda out: shutil.copyfile(other_run / name, out / name))
    with pytest.raises(ProbesError, match=f"'{out / name}' (belongs to run|is not the file this run wrote)"):
        read_run(out)
    page = (out / "index.html").read_bytes()
    assert cli.main(["report", str(out)]) == 2
    assert name in one_error_line(capsys)
    assert (out / "index.html").read_bytes() == page  # nothing rewritten
    other_id = json.loads((other_run / "results.json").read_text())["run_id"]
    if name.endswith((".parquet", ".html")):
        with pytest.raises(ProbesError, match=f"belongs to run {other_id}, not to run "):
            read_run(out)


def test_report_into_a_read_only_directory_is_one_line(good_run, monkeypatch, capsys):
    # root ignores permission bits, so the refusal the file system would give is simulated at the write
    def read_only(path, text):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("probes.report.render.write_text", read_only)
    assert cli.main(["report", str(good_run)]) == 2
    assert "Permission denied" in one_error_line(capsys)


# --- prompt sets: never a silently wrong verdict ----------------------------------------------------------------


def test_prompts_of_another_tokenizer_are_refused_naming_both(toy_dir, tmp_path):
    other_vocab = [VOCAB[0], VOCAB[2], VOCAB[1], *VOCAB[3:]]  # " she" and " he" swapped: same words, other ids
    model_a = load_model_dir(toy_dir)
    model_b = load_model_dir(toy_with_tokenizer(tmp_path / "other", other_vocab))
    prompts = PromptSet.from_strings(model_a, [RECORD] * 12)
    with pytest.raises(ProbesError) as err:
        role_attention(model_b, prompts, "pronoun", "antecedent")
    assert prompts.tokenizer in str(err.value) and model_b.tokenizer._probes_fingerprint in str(err.value)
    assert prompts.tokenizer != model_b.tokenizer._probes_fingerprint
    role_attention(model_a, prompts, "pronoun", "antecedent")  # its own model takes it


@pytest.mark.real
def test_smollm2_prompts_on_gemma_are_refused(smollm2, gemma):
    from probes.claims.evaluation import evaluate
    from probes.claims.types import Claim

    prompts = tasks.generate(smollm2, "gender_tag", 6)
    with pytest.raises(ProbesError, match="tokenised by .* but the model .* uses"):
        evaluate(gemma, prompts, Claim(None, "end", "name"))


def test_token_ids_and_pairs_that_cannot_be_right_are_refused(toy_model):
    good = pronoun_prompts(toy_model, 4)
    parts = dict(clean=good.clean, corrupt=good.corrupt, answer=good.answer, foil=good.foil, roles=good.roles)
    cases = {
        "negative token id": parts | {"clean": good.clean - 1},
        "answer and foil are the same": parts | {"foil": good.answer},
        "same tokens: not a minimal pair": parts | {"corrupt": good.clean},
        "empty": {k: v[:0] if k != "roles" else {r: p[:0] for r, p in v.items()} for k, v in parts.items()},
    }
    for message, bad in cases.items():
        with pytest.raises(ProbesError, match=message):
            PromptSet.from_tokens(**bad).check_pairs()  # the last two only where a minimal pair is needed
        if message in ("answer and foil are the same", "same tokens: not a minimal pair"):
            with pytest.raises(ProbesError, match=message):
                behaviour(toy_model.model, PromptSet.from_tokens(**bad))
    past_vocab = PromptSet.from_tokens(**parts | {"answer": good.answer + toy_model.model.cfg.d_vocab})
    with pytest.raises(ProbesError, match="past the vocabulary"):
        role_attention(toy_model.model, past_vocab, "pronoun", "antecedent")


def test_jsonl_lines_that_cannot_be_pairs_name_their_line(toy_dir, tmp_path, capsys):
    model = load_model_dir(toy_dir)
    cases = {
        "answer and foil are both": RECORD | {"foil": RECORD["answer"]},
        "clean and corrupt are the same text": RECORD | {"corrupt": RECORD["clean"]},
        "lone surrogate": RECORD | {"clean": "Mary \ud800 and John went to the park she"},
    }
    for message, bad in cases.items():
        path = tmp_path / "p.jsonl"
        path.write_text(json.dumps(RECORD) + "\n\n" + json.dumps(bad) + "\n")
        with pytest.raises(ProbesError, match=f"p.jsonl line 3: .*{message}"):
            PromptSet.from_jsonl(path, model)
    path.write_text((json.dumps(RECORD) + "\n") * 3)
    with pytest.warns(RepeatedLines, match="repeats lines 2 \\(= 1\\), 3 \\(= 1\\)"):
        assert len(PromptSet.from_jsonl(path, model)) == 3  # duplicates are kept, and reported


def test_a_prompt_longer_than_the_context_is_refused_before_the_model_runs(toy_dir, tmp_path, capsys):
    long = " ".join(["Mary and John went to the park"] * 3) + " she"  # 22 words and a BOS: the toy reads 16
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps(RECORD | {"clean": long, "corrupt": long[:-3] + "he"}) + "\n")
    spec = spec_file(tmp_path / "a.toml", toy_dir, task=None, prompts=str(path), src="pronoun", dst="antecedent")
    assert cli.main(["run", str(spec), "--out", str(tmp_path / "run")]) == 2
    assert f"is 23 tokens but {toy_dir} reads at most 16" in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


# --- memory and n -------------------------------------------------------------------------------------------------


def test_n_beyond_memory_or_distinct_prompts_is_refused_before_generating(toy_model, monkeypatch):
    with pytest.raises(ProbesError, match="needs about .* GB of memory"):
        tasks.generate(toy_model.model, "induction", 10**9)
    monkeypatch.setitem(tasks.MAX_DISTINCT, "induction", lambda model, templates: 5)
    with pytest.raises(ProbesError, match="can make 5 distinct prompts"):
        tasks.generate(toy_model.model, "induction", 6)


@pytest.mark.parametrize("task", sorted(TEMPLATED))
def test_n_no_tokenizer_could_make_distinct_is_refused_before_the_model_loads(toy_dir, tmp_path, capsys, monkeypatch,
                                                                              task):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("probes.run.pipeline.load_model", no_model)
    monkeypatch.setattr("probes.core.memory.available_bytes", lambda: 10**18)  # memory is not what stops it here
    bound = tasks.MAX_DISTINCT[task](None, None)  # every word counted as a single token
    spec = spec_file(tmp_path / "a.toml", toy_dir, task=task, src="end", dst=TASK_ROLES[task][0])
    assert cli.main(["run", str(spec), "--n", str(bound + 1), "--out", str(tmp_path / "run")]) == 2
    assert f"task '{task}' can make {bound:,} distinct prompts for any tokenizer" in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


@pytest.mark.real
def test_gender_tag_refuses_more_prompts_than_it_can_make(smollm2):
    limit = tasks.MAX_DISTINCT["gender_tag"](smollm2)
    with pytest.raises(ProbesError, match=f"can make {limit:,} distinct"):
        tasks.generate(smollm2, "gender_tag", limit + 1)


def test_long_prompts_are_batched_to_fit_the_memory_budget(toy_model, monkeypatch):
    """Halving the batch to fit changes no number; a single prompt over budget is refused in one line."""
    prompts = pronoun_prompts(toy_model, 8)
    expected = role_attention(toy_model.model, prompts, "pronoun", "antecedent", batch_size=8)
    expected_metric = read_off_resid(toy_model.model, prompts.clean, prompts, batch_size=8)
    one_prompt = 3 * toy_model.model.cfg.n_heads * prompts.n_pos**2 * 4  # scores, masked scores, pattern: float32
    batches = []
    monkeypatch.setattr("probes.core.memory.available_bytes", lambda: 2 * (2 * one_prompt))  # 2 prompts fit
    original = toy_model.model.run_with_hooks
    monkeypatch.setattr(toy_model.model, "run_with_hooks", lambda t, **kw: batches.append(len(t)) or original(t, **kw))
    torch.testing.assert_close(role_attention(toy_model.model, prompts, "pronoun", "antecedent", batch_size=8), expected)
    assert batches == [2, 2, 2, 2]
    torch.testing.assert_close(read_off_resid(toy_model.model, prompts.clean, prompts, batch_size=8), expected_metric)
    monkeypatch.setattr("probes.core.memory.available_bytes", lambda: one_prompt)
    with pytest.raises(ProbesError, match="needs about .* shorten the prompts"):
        role_attention(toy_model.model, prompts, "pronoun", "antecedent")
    with pytest.raises(ProbesError, match="a forward pass .* needs about"):
        read_off_resid(toy_model.model, prompts.clean, prompts)


def _budget(monkeypatch, nbytes: int) -> None:
    """Make the memory budget ``nbytes`` through PROBES_MEMORY_FRACTION, on a fixed (fake) amount of free memory."""
    free = 10**12
    monkeypatch.setattr("probes.core.memory.available_bytes", lambda: free)
    monkeypatch.setenv(memory.FRACTION_ENV, repr(nbytes / free))


def test_patching_batches_shrink_to_the_budget_with_the_same_numbers(toy_model, monkeypatch):
    """A tiny PROBES_MEMORY_FRACTION splits the patched runs into smaller batches and changes no number; a budget
    that cannot hold the clean and corrupt runs is refused in one line before they run."""
    model, prompts = toy_model.model, pronoun_prompts(toy_model, 8)
    sizes: list[int] = []
    original = engine.staggered_run
    monkeypatch.setattr(engine, "staggered_run", lambda m, bucket, rows: sizes.append(len(rows)) or original(m, bucket, rows))
    expected = patch_heads(model, prompts, workers=1, progress=False)
    unbatched, sizes[:] = list(sizes), []
    kept = reference_bytes(model, len(prompts), int(prompts.end.max()) + 1, ["z"])
    _budget(monkeypatch, kept + 4096)  # room for the reference runs; batches of a few patched runs each
    torch.testing.assert_close(patch_heads(model, prompts, workers=1, progress=False), expected, atol=1e-5, rtol=0)
    assert sum(sizes) == sum(unbatched) and max(sizes) < max(unbatched), (sizes, unbatched)
    _budget(monkeypatch, kept // 2)
    with pytest.raises(ProbesError, match=f"patching {len(prompts)} prompts .* needs about .* MB of memory, more than"):
        patch_heads(model, prompts, workers=1, progress=False)


def test_path_patching_batches_shrink_to_the_budget_with_the_same_numbers(toy_model, monkeypatch):
    from probes.evidence.patching import patch_paths, paths
    from probes.evidence.patching.engine import row_bytes

    model, prompts = toy_model.model, pronoun_prompts(toy_model, 8)
    senders, receivers = [(0, 0), (0, 1), (0, 2)], [(1, 2, "k"), (1, 0, "v")]
    sizes: list[int] = []
    original = paths._paths_batch
    monkeypatch.setattr(paths, "_paths_batch", lambda m, batch, *rest: sizes.append(len(batch)) or original(m, batch, *rest))
    expected = patch_paths(model, prompts, senders, receivers, progress=False)
    assert sizes == [8]
    one_prompt = (len(senders) + 2) * row_bytes(model, 0, int(prompts.end.max()) + 1)
    _budget(monkeypatch, 2 * one_prompt)  # two prompts a batch instead of eight
    result = patch_paths(model, prompts, senders, receivers, progress=False)
    assert sizes[1:] == [2, 2, 2, 2]
    torch.testing.assert_close(result.effect, expected.effect, atol=1e-5, rtol=0)
    _budget(monkeypatch, one_prompt // 2)
    with pytest.raises(ProbesError, match="path patching .* needs about .* use fewer senders"):
        patch_paths(model, prompts, senders, receivers, progress=False)


def test_harvest_batches_shrink_to_the_budget_and_probing_is_refused_in_one_line(toy_model, monkeypatch, tmp_path):
    model, prompts = toy_model.model, pronoun_prompts(toy_model, 8)
    expected = harvest(model, prompts, tmp_path / "all", kinds=("z",), at="pronoun")
    many = harvest(model, pronoun_prompts(toy_model, 96), tmp_path / "many", kinds=("z",), at="pronoun")
    assert len(expected.manifest["shards"]) == 1
    n_pos = int(prompts.end.max()) + 1
    _budget(monkeypatch, harvest_bytes(model, 2, n_pos, ["z"], model.cfg.n_layers, False))  # two prompts fit
    store = harvest(model, prompts, tmp_path / "small", kinds=("z",), at="pronoun")
    assert len(store.manifest["shards"]) == len(prompts) // 2
    for hook in expected.hooks:
        torch.testing.assert_close(store.load(hook), expected.load(hook), atol=1e-5, rtol=0)
    _budget(monkeypatch, harvest_bytes(model, 1, n_pos, ["z"], model.cfg.n_layers, False) // 2)
    with pytest.raises(ProbesError, match="harvesting activations .* needs about .* shorten the prompts"):
        harvest(model, prompts, tmp_path / "none", kinds=("z",), at="pronoun")
    assert not (tmp_path / "none").exists()
    _budget(monkeypatch, probe_bytes(many.n_rows, many.manifest["hooks"][many.hooks[0]]["shape"]) - 1)
    with pytest.raises(ProbesError, match=f"probing {many.hooks[0]} .* needs about"):
        probe_activations(many, [antecedent_identity], n_boot=10)


def test_run_prints_each_stage_estimate_first_and_refuses_what_cannot_fit(toy_dir, toy_model, tmp_path, capsys,
                                                                          monkeypatch):
    spec = spec_file(tmp_path / "a.toml", toy_dir)
    assert cli.main(["run", str(spec), "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out.splitlines()
    memory_line = next(i for i, line in enumerate(out) if line.startswith("memory: "))
    assert all(f"{stage} ~" in out[memory_line] for stage in ("forward passes", "attention", "patching"))
    assert out[memory_line + 1].startswith("time: ") and "estimate" in out[memory_line + 1]
    assert memory_line < next(i for i, line in enumerate(out) if line.startswith("report: "))
    cfg = toy_model.model.cfg  # the model in toy_dir
    records = 12 * (tasks.RECORD_BYTES + tasks.MEASURE_BYTES_PER_HEAD * cfg.n_layers * cfg.n_heads)
    _budget(monkeypatch, records)  # the prompts fit; the attention the run keeps for them does not
    assert cli.main(["run", str(spec), "--out", str(tmp_path / "tiny")]) == 2
    assert "stage needs about" in one_error_line(capsys)
    assert not (tmp_path / "tiny").exists()


# --- the model cache ----------------------------------------------------------------------------------------------


def _fake_cache(tmp_path, monkeypatch) -> Path:
    """A cached 'smollm2-135m' that is really the toy (weights, config, tokenizer) with a manifest of every file."""
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path))
    model_dir = toy_with_tokenizer(tmp_path / "smollm2-135m")
    manifest = {"format": cache.CACHE_FORMAT, "name": "smollm2-135m", "files": cache.file_hashes(model_dir)}
    (model_dir / cache.MANIFEST_FILE).write_text(json.dumps(manifest))
    return model_dir


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "model.safetensors"])
def test_any_corrupt_cached_file_is_detected_and_rebuilt(tmp_path, monkeypatch, capfd, name):
    model_dir = _fake_cache(tmp_path, monkeypatch)
    assert cache.cache_status("smollm2-135m") == "cached"
    out = subprocess.run([sys.executable, "-m", "probes.cli", "models"], capture_output=True, text=True,
                         env={**os.environ, cache.CACHE_ENV: str(tmp_path), "PYTHONPATH": str(REPO)})
    assert out.returncode == 0 and " cached " in out.stdout.splitlines()[1]
    data = (model_dir / name).read_bytes()
    (model_dir / name).write_bytes(data[: len(data) // 2])  # truncated
    assert cache.cache_status("smollm2-135m") == "corrupt"
    out = subprocess.run([sys.executable, "-m", "probes.cli", "models"], capture_output=True, text=True,
                         env={**os.environ, cache.CACHE_ENV: str(tmp_path), "PYTHONPATH": str(REPO)})
    assert " corrupt " in out.stdout.splitlines()[1]
    rebuilt = []
    monkeypatch.setattr(loading, "build_cache", lambda n: rebuilt.append(n))
    loading.ensure_cached("smollm2-135m")
    assert rebuilt == ["smollm2-135m"] and f"({name} do not match their sha256); rebuilding" in capfd.readouterr().err


def test_scratch_of_a_killed_build_is_removed_on_the_next_load(tmp_path, monkeypatch):
    _fake_cache(tmp_path, monkeypatch)
    stale, fresh = tmp_path / ".smollm2-135m.killed", tmp_path / ".smollm2-135m.building"
    for scratch in (stale, fresh):
        (scratch / "scratch").mkdir(parents=True)
    old = time.time() - 2 * loading.STALE_BUILD_S
    os.utime(stale, (old, old))
    loading.ensure_cached("smollm2-135m")
    assert not stale.exists() and fresh.exists()  # a build that may still be running keeps its directory


# --- fast errors: no torch, no model, no retries -----------------------------------------------------------------


def test_input_errors_come_before_torch_is_imported(toy_dir, tmp_path):
    spec = spec_file(tmp_path / "a.toml", toy_dir, seed="x")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    bad_prompts = tmp_path / "p.jsonl"
    bad_prompts.write_text(json.dumps(RECORD | {"foil": RECORD["answer"]}) + "\n")
    good = spec_file(tmp_path / "b.toml", toy_dir)
    for args in (["run", str(spec)], ["run", str(good), "--out", str(tmp_path / "mine")],
                 ["run", str(good), "--prompts", str(bad_prompts), "--out", str(tmp_path / "x")],
                 ["run", str(good), "--model", "gpt2", "--out", str(tmp_path / "y")],
                 ["run", str(good), "--n", str(10**12), "--out", str(tmp_path / "z")]):  # records alone: 4 PB
        code = ("import sys; from probes import cli; rc = cli.main(sys.argv[1:]); "
                "print('torch' in sys.modules, 'transformer_lens' in sys.modules); sys.exit(rc)")
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"})
        assert out.returncode == 2 and out.stdout.strip() == "False False", (args, out.stdout, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr


# --- kill safety ------------------------------------------------------------------------------------------------


def _start_run(spec: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "probes.cli", "run", str(spec), "--out", str(out), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def _wait_for_staging(proc: subprocess.Popen, out: Path) -> None:
    """Until the run has begun building its directory beside ``out`` (the model is loaded, work under way)."""
    while not any(p.name.startswith(f".{out.name}.") for p in out.parent.iterdir()):
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.02)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_a_killed_run_leaves_no_directory_or_the_previous_run(toy_dir, tmp_path, sig):
    spec = spec_file(tmp_path / "a.toml", toy_dir, n=24)
    fresh, previous = tmp_path / "fresh", tmp_path / "previous"
    assert cli.main(["run", str(spec_file(tmp_path / "b.toml", toy_dir)), "--out", str(previous)]) == 0
    before = snapshot(previous)
    for out, extra in ((fresh, ()), (previous, ("--overwrite",))):
        proc = _start_run(spec, out, *extra)
        _wait_for_staging(proc, out)
        proc.send_signal(sig)
        code = proc.wait(timeout=120)
        assert code == (130 if sig == signal.SIGINT else -signal.SIGKILL), proc.stderr.read()
    assert not fresh.exists()
    assert snapshot(previous) == before and read_run(previous).n_prompts == 12
    if sig == signal.SIGINT:  # an interrupted run cleans up its scratch; a killed one cannot (see STALE_RUN_S)
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_an_interrupt_that_a_library_turns_into_another_error_still_ends_the_run_as_interrupted(monkeypatch, capsys):
    def interrupted_inside_a_library(args):  # as safetensors' loader does: the KeyboardInterrupt becomes a ValueError
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            raise ValueError("could not determine the shape of object type 'torch.storage.UntypedStorage'") from None

    def plain_bug(args):
        raise ValueError("a bug, not an interrupt")

    monkeypatch.setattr(cli, "cmd_models", interrupted_inside_a_library)
    assert cli.main(["models"]) == 130
    assert capsys.readouterr().err.strip() == "probes: interrupted"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    monkeypatch.setattr(cli, "cmd_models", plain_bug)
    with pytest.raises(ValueError, match="a bug"):
        cli.main(["models"])


KILL_AFTER_FIRST_LAYER = """
import os, signal, sys
from probes import toy
from probes.evidence.patching import checkpoint, patch_heads
from probes.prompts.tasks.toy import pronoun_prompts

save = checkpoint.Checkpoint.save
def save_then_die(self, layer, values):
    save(self, layer, values)
    os.kill(os.getpid(), signal.SIGKILL)
checkpoint.Checkpoint.save = save_then_die
t = toy.build()
patch_heads(t.model, pronoun_prompts(t, 12), checkpoint_dir=sys.argv[1])
"""


def test_a_patching_sweep_killed_midway_resumes_to_the_same_numbers(toy_model, tmp_path):
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER_FIRST_LAYER, str(tmp_path)],
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -signal.SIGKILL
    (saved,) = list(tmp_path.rglob("layer*.safetensors"))  # one finished layer survived the kill
    stamp = saved.stat().st_mtime_ns
    prompts = pronoun_prompts(toy_model, 12)
    resumed = patch_heads(toy_model.model, prompts, checkpoint_dir=tmp_path)
    assert saved.stat().st_mtime_ns == stamp  # read back, not recomputed
    assert len(list(tmp_path.rglob("layer*.safetensors"))) == toy_model.model.cfg.n_layers
    torch.testing.assert_close(resumed, patch_heads(toy_model.model, prompts), atol=1e-6, rtol=0)

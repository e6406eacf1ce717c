"""Text prompt pairs: role matching, tokenisation, padding and JSONL round trips.

Role positions are checked against TransformerLens's own tokenisation (``model.to_tokens`` / ``to_str_tokens``)
on the real SmolLM2 tokenizer, so they test what the model will actually see.
"""

import json
import os

import pytest
import torch
from transformer_lens import HookedTransformer

from probes.core.errors import ProbesError
from probes.prompts.promptset import PromptSet
from probes.models.toy import ToyModel
from probes.prompts.tasks import pronoun_prompts

PAIR = {
    "clean": "Alice and Bob went to the park. She gave the ball to",
    "corrupt": "Alice and Bob went to the park. He gave the ball to",
    "answer": " Bob",
    "foil": " Alice",
    "roles": {"pronoun": "She", "antecedent": "Alice", "distractor": "Bob"},
}


# a one-token swap of the last word: a minimal pair must differ, and role matching only reads the clean text
LAST_WORD_SWAP = {"late": "soon", "to": "for", "know": "care", "She": "He", "Alice": "Bob"}


def _pair(clean: str, roles: dict, corrupt: str | None = None, answer: str = " Bob", foil: str = " Alice") -> dict:
    head, last = clean.rsplit(" ", 1)
    return {"clean": clean, "corrupt": corrupt or f"{head} {LAST_WORD_SWAP[last]}", "answer": answer, "foil": foil,
            "roles": roles}


def _str_at(model: HookedTransformer, text: str, position: int) -> str:
    return model.to_str_tokens(text)[position]


@pytest.mark.real
def test_tokens_match_transformer_lens_and_roles_sit_on_their_words(smollm2: HookedTransformer) -> None:
    prompts = PromptSet.from_strings(smollm2, [PAIR])
    assert torch.equal(prompts.clean[0], smollm2.to_tokens(PAIR["clean"])[0])
    assert torch.equal(prompts.corrupt[0], smollm2.to_tokens(PAIR["corrupt"])[0])
    assert _str_at(smollm2, PAIR["clean"], int(prompts.role("pronoun")[0])) == " She"
    assert _str_at(smollm2, PAIR["clean"], int(prompts.role("antecedent")[0])) == "Alice"
    assert _str_at(smollm2, PAIR["clean"], int(prompts.role("distractor")[0])) == " Bob"
    assert int(prompts.end[0]) == prompts.n_pos - 1
    assert prompts.answer.tolist() == smollm2.to_tokens(" Bob", prepend_bos=False)[0].tolist()
    assert prompts.foil.tolist() == smollm2.to_tokens(" Alice", prepend_bos=False)[0].tolist()
    assert prompts.texts == [PAIR]


@pytest.mark.real
def test_a_word_never_matches_inside_another(smollm2: HookedTransformer) -> None:
    text = "Then the teacher said that he was late"  # "he" hides in Then, the and teacher first
    prompts = PromptSet.from_strings(smollm2, [_pair(text, {"pronoun": "he"})])
    position = int(prompts.role("pronoun")[0])
    assert _str_at(smollm2, text, position) == " he"
    assert smollm2.to_str_tokens(text).index(" he") == position


@pytest.mark.real
def test_multi_token_role_sits_at_its_last_token(smollm2: HookedTransformer) -> None:
    text = "Laura gave the red ball to"
    str_tokens = smollm2.to_str_tokens(text)
    assert str_tokens[1:3] == ["L", "aura"]  # the premise: at the start of a text, Laura is two tokens
    prompts = PromptSet.from_strings(smollm2, [_pair(text, {"name": "Laura", "object": "the red ball"})])
    assert int(prompts.role("name")[0]) == 2
    assert str_tokens[int(prompts.role("object")[0])] == " ball"


@pytest.mark.real
def test_occurrence_counts_from_one(smollm2: HookedTransformer) -> None:
    text = "John met Mary, and then John waved to"
    roles = {"S1": "John", "S2": {"text": "John", "occurrence": 2}, "first": {"text": "John", "occurrence": 1}}
    prompts = PromptSet.from_strings(smollm2, [_pair(text, roles)])
    str_tokens = smollm2.to_str_tokens(text)
    s2 = int(prompts.role("S2")[0])
    assert str_tokens[s2] == " John" and s2 > int(prompts.role("S1")[0]) == int(prompts.role("first")[0])
    with pytest.raises(ProbesError, match="does not occur 3 times"):
        PromptSet.from_strings(smollm2, [_pair(text, {"S3": {"text": "John", "occurrence": 3}})])
    with pytest.raises(ProbesError, match="counted from 1"):
        PromptSet.from_strings(smollm2, [_pair(text, {"S0": {"text": "John", "occurrence": 0}})])


@pytest.mark.real
def test_role_must_start_at_a_token_boundary(smollm2: HookedTransformer) -> None:
    text = "I don't know"  # "'t" is one token: "t" is a word but not where a token starts
    assert "'t" in smollm2.to_str_tokens(text)
    with pytest.raises(ProbesError, match="role 'letter' 't' does not occur"):
        PromptSet.from_strings(smollm2, [_pair(text, {"letter": "t"})])
    with pytest.raises(ProbesError, match="record 1: role 'x' 'Carol' does not occur"):
        PromptSet.from_strings(smollm2, [_pair(text, {"x": "Carol"})])


@pytest.mark.real
def test_prompts_of_different_lengths_are_right_padded(smollm2: HookedTransformer) -> None:
    short = _pair("Bob saw Alice. She", {"pronoun": "She", "antecedent": "Alice", "distractor": "Bob"})
    prompts = PromptSet.from_strings(smollm2, [PAIR, short])
    n_short = smollm2.to_tokens(short["clean"]).shape[1]
    assert prompts.end.tolist() == [prompts.n_pos - 1, n_short - 1]
    assert (prompts.clean[1, n_short:] == smollm2.tokenizer.pad_token_id).all()
    assert torch.equal(prompts.clean[1, :n_short], smollm2.to_tokens(short["clean"])[0])
    with pytest.raises(ProbesError, match=r"record 2: roles \['a'\] differ"):
        PromptSet.from_strings(smollm2, [PAIR, _pair("Bob saw Alice", {"a": "Alice"})])


@pytest.mark.real
def test_jsonl_errors_name_the_line_and_the_text(smollm2: HookedTransformer, tmp_path) -> None:
    path = tmp_path / "pairs.jsonl"
    bad_length = dict(PAIR, corrupt="Alice and Bob went to the park. He then gave the ball to")
    path.write_text(json.dumps(PAIR) + "\n\n" + json.dumps(bad_length) + "\n")
    with pytest.raises(ProbesError, match="line 3: clean and corrupt tokenise to different lengths") as err:
        PromptSet.from_jsonl(path, smollm2)
    assert "He then gave" in str(err.value) and "\n" not in str(err.value)
    path.write_text(json.dumps(dict(PAIR, answer=" Bobby Tables")) + "\n")
    with pytest.raises(ProbesError, match="line 1: answer ' Bobby Tables' is [0-9]+ tokens") as err:
        PromptSet.from_jsonl(path, smollm2)
    path.write_text(json.dumps(PAIR) + "\n{not json\n")
    with pytest.raises(ProbesError, match="line 2: not valid JSON"):
        PromptSet.from_jsonl(path, smollm2)
    path.write_text(json.dumps({k: v for k, v in PAIR.items() if k != "foil"}) + "\n")
    with pytest.raises(ProbesError, match="line 1: missing 'foil'"):
        PromptSet.from_jsonl(path, smollm2)
    path.write_text(json.dumps(dict(PAIR, roles={"end": "to"})) + "\n")
    with pytest.raises(ProbesError, match="reserved"):
        PromptSet.from_jsonl(path, smollm2)
    with pytest.raises(ProbesError, match="cannot read"):
        PromptSet.from_jsonl(tmp_path / "missing.jsonl", smollm2)
    path.write_text(json.dumps(dict(PAIR, group=[1, 2])) + "\n")
    with pytest.raises(ProbesError, match="line 1: 'group' must be a string or an integer"):
        PromptSet.from_jsonl(path, smollm2)


@pytest.mark.real
def test_jsonl_groups_default_to_one_per_line(smollm2: HookedTransformer, tmp_path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (dict(PAIR, group="t1"), PAIR, dict(PAIR, group="t1"))) + "\n")
    prompts = PromptSet.from_jsonl(path, smollm2)
    assert prompts.groups == ["t1", "record 2", "t1"] and prompts.n_groups == 2
    assert prompts.group_index.tolist() == [0, 1, 0]
    prompts.to_jsonl(tmp_path / "back.jsonl")
    assert PromptSet.from_jsonl(tmp_path / "back.jsonl", smollm2).groups == prompts.groups


@pytest.mark.real
def test_jsonl_round_trip_keeps_tokens_roles_and_labels(smollm2: HookedTransformer, tmp_path) -> None:
    records = [
        dict(PAIR, labels={"template": 0}),
        _pair(
            "When Tom met Sarah, he gave a book to",
            {"pronoun": "he", "antecedent": "Tom", "distractor": "Sarah"},
            corrupt="When Tom met Sarah, she gave a book to",
            answer=" Sarah",
            foil=" Tom",
        )
        | {"labels": {"template": 1}},
    ]
    prompts = PromptSet.from_strings(smollm2, records, task="pronoun_resolution")
    assert prompts.labels == {"template": [0, 1]}
    path = tmp_path / "out.jsonl"
    path.write_text("old contents\n")
    prompts.subset([1, 0]).to_jsonl(path)
    assert os.listdir(tmp_path) == ["out.jsonl"]  # replaced in place, no temporary file left behind
    back = PromptSet.from_jsonl(path, smollm2, task="pronoun_resolution")
    flipped = prompts.subset([1, 0])
    for name in ("clean", "corrupt", "answer", "foil"):
        assert torch.equal(getattr(back, name), getattr(flipped, name))
    assert back.roles.keys() == flipped.roles.keys()
    assert all(torch.equal(back.roles[k], flipped.roles[k]) for k in back.roles)
    assert back.labels == {"template": [1, 0]}
    lines = path.read_text().splitlines()
    assert json.loads(lines[1])["roles"] == PAIR["roles"]


def test_text_prompts_need_a_tokenizer_and_token_prompts_have_no_text(toy_model: ToyModel, tmp_path) -> None:
    with pytest.raises(ProbesError, match="no tokenizer"):
        PromptSet.from_strings(toy_model.model, [PAIR])
    with pytest.raises(ProbesError, match="built from token ids"):
        pronoun_prompts(toy_model, 4).to_jsonl(tmp_path / "x.jsonl")
    assert not list(tmp_path.iterdir())


def test_tokenizer_fingerprint_ignores_padding_and_truncation_state() -> None:
    """A padded batch call (TransformerLens's ``to_tokens`` makes one) switches padding on in the backend: the same
    vocabulary must keep its fingerprint, while another vocabulary gets another."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from probes.prompts.promptset import tokenizer_fingerprint

    def words(n: int) -> PreTrainedTokenizerFast:
        backend = Tokenizer(models.WordLevel({f"w{i}": i for i in range(n)}, unk_token="w0"))
        return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="w0", unk_token="w0")

    used, fresh = words(8), words(8)
    used(["w1 w2", "w3"], padding=True, truncation=True, max_length=4)
    assert used.backend_tokenizer.padding is not None  # the call did change the backend's state
    assert tokenizer_fingerprint(used) == tokenizer_fingerprint(fresh)
    assert tokenizer_fingerprint(words(9)) != tokenizer_fingerprint(fresh)

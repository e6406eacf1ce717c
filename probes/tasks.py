"""Task generators: balanced minimal-pair prompt sets for a given model, deterministic in ``seed``.

Each generator is ``(model, n, seed=0) -> PromptSet``. Text tasks write records in the JSONL format and go through
:meth:`PromptSet.from_strings`, so generated and hand-written prompts share one tokenisation and role-matching
path. Every name, object, place and adjective is kept only if it is a single token (with its leading space) for
the model's tokenizer: a swap then never changes a prompt's length, and answers are single tokens.

Balance: consecutive prompts cycle through the cells that could otherwise explain a result (gender, name order,
template), so any block of a few prompts covers them all and label-grouped folds stay balanced.
"""

from __future__ import annotations

import random

import torch
from jaxtyping import Int
from torch import Tensor
from transformer_lens import HookedTransformer

from probes.errors import ProbesError
from probes.metrics import answer_is_top1, logit_diff
from probes.prompts import PromptSet
from probes.stats import bootstrap_mean

FEMALE_NAMES = (
    "Mary Anna Sarah Emma Lucy Kate Alice Laura Jessica Emily Rachel Rose Grace Julia Linda Susan Karen Lisa "
    "Nancy Helen Sandra Donna Carol Ruth Sharon Michelle Amy Angela Melissa Anne Maria Diana Kelly Claire Sophie "
    "Olivia Hannah Chloe Ella Amber Megan Natalie Victoria Jane Joan Nicole Christina Elizabeth Catherine Jennifer "
    "Heather Rebecca Samantha Stephanie Katherine Lauren Martha Monica Paula Wendy Tina Beth Jenny Molly Sally"
).split()
MALE_NAMES = (
    "John Tom James Paul Mark David Michael Robert William Richard Thomas Charles Daniel Matthew George Steven "
    "Kevin Brian Edward Jason Jeff Ryan Gary Eric Jacob Peter Frank Scott Andrew Raymond Gregory Joshua Henry "
    "Patrick Jack Dennis Adam Nathan Douglas Kyle Carl Arthur Roger Joe Sam Ben Alex Chris Dan Mike Bob "
    "Tim Luke Max Oliver Harry Simon Victor Martin Philip Louis Bruce Howard Fred Ray Leo Ian Neil Oscar"
).split()
PLACES = (
    "park store garden restaurant school hospital office house station beach library market church museum "
    "hotel cafe airport kitchen"
).split()
OBJECTS = "ball book ring drink snack gift letter key bag cup pen bottle flower basket hat coin card".split()
ADJECTIVES = (
    "funny kind nice smart quiet happy brave good great lovely sweet friendly honest calm strong clever gentle "
    "warm polite cheerful"
).split()

# {A} and {B} are the two names, {P}/{p} the pronoun (capitalised or not): the answer is the name the pronoun
# does NOT refer to, because the antecedent is the one giving something to the other.
PRONOUN_TEMPLATES = (
    "{A} and {B} went to the {place}. {P} gave the {object} to",
    "{A} and {B} were at the {place}. {P} handed the {object} to",
    "{A} met {B} at the {place}. {P} passed the {object} to",
    "After {A} and {B} arrived at the {place}, {p} gave the {object} to",
    "{A} and {B} spent the day at the {place}. Later, {p} threw the {object} to",
    "At the {place}, {A} sat next to {B}. {P} offered the {object} to",
    "{A} and {B} walked into the {place}. {P} showed the {object} to",
    "{A} was talking with {B} at the {place}. {P} sold the {object} to",
    "While {A} and {B} were at the {place}, {p} lent the {object} to",
    "{A} visited {B} at the {place}. {P} brought the {object} to",
    "Yesterday {A} and {B} went to the {place}, where {p} gave the {object} to",
    "{A} and {B} had lunch at the {place}. Afterwards {p} gave the {object} to",
)
GENDER_TEMPLATES = (
    "So {name} is such a {adj} person, isn't",
    "Honestly, {name} is such a {adj} person, isn't",
    "I think {name} is a very {adj} person, isn't",
    "Wow, {name} is really a {adj} friend, isn't",
    "Well, {name} is such a {adj} neighbour, isn't",
    "You know, {name} is a truly {adj} teacher, isn't",
)
# Wang et al. (2022)'s BABA templates ({S} the subject, said twice; {IO} the indirect object), final name removed.
IOI_TEMPLATES = (
    "Then, {S} and {IO} went to the {place}. {S} gave a {object} to",
    "Then, {S} and {IO} had a lot of fun at the {place}. {S} gave a {object} to",
    "Then, {S} and {IO} were working at the {place}. {S} decided to give a {object} to",
    "Then, {S} and {IO} were thinking about going to the {place}. {S} wanted to give a {object} to",
    "Then, {S} and {IO} had a long argument, and afterwards {S} said to",
    "After {S} and {IO} went to the {place}, {S} gave a {object} to",
    "When {S} and {IO} got a {object} at the {place}, {S} decided to give it to",
    "When {S} and {IO} got a {object} at the {place}, {S} decided to give the {object} to",
    "While {S} and {IO} were working at the {place}, {S} gave a {object} to",
    "While {S} and {IO} were commuting to the {place}, {S} gave a {object} to",
    "After the lunch, {S} and {IO} went to the {place}. {S} gave a {object} to",
    "Afterwards, {S} and {IO} went to the {place}. {S} gave a {object} to",
    "Then, {S} and {IO} had a long argument. Afterwards {S} said to",
    "Friends {S} and {IO} found a {object} at the {place}. {S} gave it to",
)


def single_tokens(model: HookedTransformer, words: list[str] | tuple[str, ...], task: str) -> list[str]:
    """The words (deduplicated, in order) that are one token when preceded by a space, as they appear mid-text."""
    tokenizer = _tokenizer(model, task)
    words = list(dict.fromkeys(words))
    ids = tokenizer([" " + w for w in words], add_special_tokens=False)["input_ids"]
    return [w for w, i in zip(words, ids) if len(i) == 1]


def _tokenizer(model: HookedTransformer, task: str):
    if model.tokenizer is None:
        raise ProbesError(
            f"task '{task}' writes text and this model has no tokenizer; for toy models use probes.toy's "
            "prompt builders or PromptSet.from_tokens"
        )
    return model.tokenizer


def _pool(model: HookedTransformer, words: tuple[str, ...], what: str, task: str, need: int) -> list[str]:
    kept = single_tokens(model, words, task)
    if len(kept) < need:
        raise ProbesError(
            f"task '{task}' needs at least {need} {what} that are single tokens for this tokenizer, found {len(kept)}"
        )
    return kept


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ProbesError(f"n must be a positive integer, got {n!r}")


def _template_order(rng: random.Random, n_templates: int) -> list[int]:
    """A seeded permutation of the templates, cycled so every template is used before any repeats."""
    return rng.sample(range(n_templates), n_templates)


def pronoun_resolution(model: HookedTransformer, n: int, seed: int = 0) -> PromptSet:
    """"Alice and Bob went to the park. She gave the ball to" -> " Bob": the answer is the non-antecedent.

    One name is female and one male, so the pronoun picks the antecedent (the giver) and the answer is the
    other name; the corrupt prompt flips the pronoun, which swaps answer and foil. Prompt ``i`` has a female
    antecedent when ``i`` is even and the antecedent first when ``i % 4 < 2``; each block of 4 shares a template.
    Roles: ``pronoun``, ``antecedent``, ``distractor`` (the answer name), ``end``.
    """
    task = "pronoun_resolution"
    _check_n(n)
    rng = random.Random(seed)
    females = _pool(model, FEMALE_NAMES, "female names", task, 2)
    males = _pool(model, MALE_NAMES, "male names", task, 2)
    places, objects = _pool(model, PLACES, "places", task, 1), _pool(model, OBJECTS, "objects", task, 1)
    order = _template_order(rng, len(PRONOUN_TEMPLATES))
    records = []
    for i in range(n):
        female, antecedent_first = i % 2 == 0, i % 4 < 2
        she, he = rng.choice(females), rng.choice(males)
        antecedent, other = (she, he) if female else (he, she)
        a, b = (antecedent, other) if antecedent_first else (other, antecedent)
        template = order[(i // 4) % len(order)]
        place, obj = rng.choice(places), rng.choice(objects)

        def fill(pronoun: str) -> str:
            return PRONOUN_TEMPLATES[template].format(
                A=a, B=b, place=place, object=obj, P=pronoun.capitalize(), p=pronoun
            )

        pronoun, flipped = ("she", "he") if female else ("he", "she")
        pronoun_word = pronoun.capitalize() if "{P}" in PRONOUN_TEMPLATES[template] else pronoun
        records.append(
            {
                "clean": fill(pronoun),
                "corrupt": fill(flipped),
                "answer": " " + other,
                "foil": " " + antecedent,
                "roles": {"pronoun": pronoun_word, "antecedent": antecedent, "distractor": other},
                "labels": {
                    "template": template,
                    "antecedent": antecedent,
                    "antecedent_gender": "female" if female else "male",
                    "order": "antecedent_first" if antecedent_first else "distractor_first",
                },
            }
        )
    return PromptSet.from_strings(model, records, task=task)


def gender_tag(model: HookedTransformer, n: int, seed: int = 0) -> PromptSet:
    """"So Alice is such a funny person, isn't" -> " she" (foil " he"); the corrupt prompt has a male name.

    Genders alternate (female at even ``i``); pairs of prompts share a template. Names are single tokens, so
    the swap keeps the length. Roles: ``name``, ``end``.
    """
    task = "gender_tag"
    _check_n(n)
    rng = random.Random(seed)
    females = _pool(model, FEMALE_NAMES, "female names", task, 1)
    males = _pool(model, MALE_NAMES, "male names", task, 1)
    adjectives = _pool(model, ADJECTIVES, "adjectives", task, 1)
    order = _template_order(rng, len(GENDER_TEMPLATES))
    records = []
    for i in range(n):
        female = i % 2 == 0
        name, swapped = (rng.choice(females), rng.choice(males)) if female else (rng.choice(males), rng.choice(females))
        template, adj = order[(i // 2) % len(order)], rng.choice(adjectives)
        answer, foil = (" she", " he") if female else (" he", " she")
        records.append(
            {
                "clean": GENDER_TEMPLATES[template].format(name=name, adj=adj),
                "corrupt": GENDER_TEMPLATES[template].format(name=swapped, adj=adj),
                "answer": answer,
                "foil": foil,
                "roles": {"name": name},
                "labels": {"name": name, "gender": "female" if female else "male", "template": template},
            }
        )
    return PromptSet.from_strings(model, records, task=task)


IOI_CORRUPTIONS = ("abc", "flip_s2")


def ioi(model: HookedTransformer, n: int, seed: int = 0, corruption: str = "abc") -> PromptSet:
    """Indirect object identification (Wang et al. 2022): "... Mary and John ... John gave a drink to" -> " Mary".

    Orders alternate BABA (``i`` even: subject first) and ABBA; pairs of prompts share a template. Answer IO,
    foil S; roles ``IO``, ``S1``, ``S2``, ``end``. Two corruptions:

    - ``"abc"`` (default): Wang et al.'s ABC distribution: the three name slots (S1, IO, S2) get three fresh
      distinct names, so it keeps the sentence and its length but no name is repeated and neither IO nor S
      occurs; the logit difference there measures what the model says without the task's information.
    - ``"flip_s2"``: only the repeated subject S2 becomes the IO name (TransformerLens's exploratory-analysis
      demo), so the correct answer flips to S; clean and corrupt share every token before S2.
    """
    task = "ioi"
    _check_n(n)
    if corruption not in IOI_CORRUPTIONS:
        raise ProbesError(f"unknown IOI corruption '{corruption}'; choose one of: {', '.join(IOI_CORRUPTIONS)}")
    rng = random.Random(seed)
    names = _pool(model, FEMALE_NAMES + MALE_NAMES, "names", task, 5)
    places, objects = _pool(model, PLACES, "places", task, 1), _pool(model, OBJECTS, "objects", task, 1)
    order = _template_order(rng, len(IOI_TEMPLATES))
    records = []
    for i in range(n):
        baba = i % 2 == 0
        template = order[(i // 2) % len(order)]
        s, io, c1, c2, c3 = rng.sample(names, 5)
        place, obj = rng.choice(places), rng.choice(objects)
        text = IOI_TEMPLATES[template]
        if not baba:  # ABBA: the indirect object is named first
            text = text.replace("{S} and {IO}", "{IO} and {S}", 1)
        first, second = ("S", "IO") if baba else ("IO", "S")
        clean = text.format(S=s, IO=io, place=place, object=obj)
        if corruption == "abc":  # the first two names become c1, c2 and the repeated subject a third name c3
            abc = text.replace("{" + first + "}", "{c1}", 1).replace("{" + second + "}", "{c2}", 1)
            corrupt = abc.replace("{S}", "{c3}").format(c1=c1, c2=c2, c3=c3, place=place, object=obj)
        else:  # the second (last) subject mention becomes the indirect object
            at = text.rindex("{S}")
            corrupt = (text[:at] + "{IO}" + text[at + 3 :]).format(S=s, IO=io, place=place, object=obj)
        records.append(
            {
                "clean": clean,
                "corrupt": corrupt,
                "answer": " " + io,
                "foil": " " + s,
                "roles": {"IO": io, "S1": s, "S2": {"text": s, "occurrence": 2}},
                "labels": {"template": template, "order": "BABA" if baba else "ABBA", "IO": io, "S": s},
            }
        )
    return PromptSet.from_strings(model, records, task=task)


# ---------------------------------------------------------------------------------------------------------------
# Random-token tasks: attention-pattern detectors (previous-token, duplicate, induction heads)


def ordinary_token_ids(model: HookedTransformer) -> Int[Tensor, " token"]:
    """Token ids a random sequence may use: all but special and added tokens (BOS, EOS, PAD, UNK, <unused..>).

    A tokenizer-less model (a toy) has only its id 0 excluded, the BOS by convention.
    """
    n_vocab = model.cfg.d_vocab
    allowed = torch.ones(n_vocab, dtype=torch.bool)
    tokenizer = model.tokenizer
    if tokenizer is None:
        allowed[0] = False
    else:
        allowed[len(tokenizer) :] = False
        special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
        allowed[[i for i in special if i < n_vocab]] = False
    return allowed.nonzero()[:, 0]


def _pool_of(model: HookedTransformer, vocab: Tensor | None, need: int) -> Int[Tensor, " token"]:
    pool = ordinary_token_ids(model) if vocab is None else torch.as_tensor(vocab, dtype=torch.long).unique()
    if len(pool) < need:
        raise ProbesError(f"the token pool has {len(pool)} tokens but {need} distinct ones are needed; shorten length")
    return pool


def _draw(rng: random.Random, pool: Int[Tensor, " token"], k: int, exclude: set[int] = frozenset()) -> list[int]:
    """``k`` distinct tokens from ``pool``, none in ``exclude``; O(k), even for Gemma's 262k-token pool."""
    picks: list[int] = []
    while len(picks) < k:
        for j in rng.sample(range(len(pool)), k - len(picks)):
            token = int(pool[j])
            if token not in exclude and token not in picks:
                picks.append(token)
    return picks


def _bos(model: HookedTransformer) -> int:
    tokenizer = model.tokenizer
    return 0 if tokenizer is None or tokenizer.bos_token_id is None else tokenizer.bos_token_id


def _length(model: HookedTransformer, length: int | None, default: int, copies: int) -> int:
    longest = (model.cfg.n_ctx - 1) // copies
    length = min(default, longest) if length is None else length
    if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= longest:
        raise ProbesError(
            f"length must be an integer from 1 to {longest} for a context of {model.cfg.n_ctx}, got {length!r}"
        )
    return length


def previous_token(
    model: HookedTransformer, n: int, seed: int = 0, length: int | None = None, vocab: Tensor | None = None
) -> PromptSet:
    """``BOS r`` with ``r`` ``length`` distinct random tokens (default 32, or what fits the context).

    The corrupt prompt changes only the token before the last, so the pair isolates previous-token
    information; answer = that token on the clean side, foil = its corrupt replacement (a weak behavioural
    metric: previous-token heads are judged by attention first). Roles: ``end`` and ``previous`` (= end - 1).
    ``vocab`` restricts the token ids drawn (default: :func:`ordinary_token_ids`).
    """
    _check_n(n)
    length = _length(model, length, 32, copies=1)
    if length < 2:
        raise ProbesError("previous_token needs length >= 2: the last token must have a real previous token")
    pool, rng, bos = _pool_of(model, vocab, length + 1), random.Random(seed), _bos(model)
    clean, corrupt, answer, foil = [], [], [], []
    for _ in range(n):
        r = _draw(rng, pool, length)
        (swap,) = _draw(rng, pool, 1, exclude=set(r))
        clean.append([bos, *r])
        corrupt.append([bos, *r[:-2], swap, r[-1]])
        answer.append(r[-2])
        foil.append(swap)
    end = torch.full((n,), length)
    return PromptSet.from_tokens(
        torch.tensor(clean), torch.tensor(corrupt), torch.tensor(answer), torch.tensor(foil),
        {"end": end, "previous": end - 1}, task="previous_token",
    )


def induction(
    model: HookedTransformer, n: int, seed: int = 0, length: int | None = None, vocab: Tensor | None = None
) -> PromptSet:
    """``BOS r r`` (``r``: ``length`` distinct random tokens, default 20): at the end the repeat predicts ``r[0]``.

    The last token is ``r[-1]``, whose first occurrence was followed by ``r[0]``: that is the answer. The corrupt
    prompt is ``BOS r' r`` with ``r'`` fresh and disjoint from ``r``: same last half, nothing to induce; the foil is a
    token in neither. Roles as in :func:`probes.toy.repeated_prompts`: ``end``, and ``induction_target`` = the position
    right after the first occurrence of the end token (where an induction head looks).
    """
    _check_n(n)
    length = _length(model, length, 20, copies=2)
    pool, rng, bos = _pool_of(model, vocab, 2 * length + 1), random.Random(seed), _bos(model)
    clean, corrupt, answer, foil = [], [], [], []
    for _ in range(n):
        r = _draw(rng, pool, length)
        fresh = _draw(rng, pool, length + 1, exclude=set(r))
        clean.append([bos, *r, *r])
        corrupt.append([bos, *fresh[:length], *r])
        answer.append(r[0])
        foil.append(fresh[length])
    return PromptSet.from_tokens(
        torch.tensor(clean), torch.tensor(corrupt), torch.tensor(answer), torch.tensor(foil),
        {"end": torch.full((n,), 2 * length), "induction_target": torch.full((n,), length + 1)}, task="induction",
    )


GENERATORS = {
    "ioi": ioi,
    "pronoun_resolution": pronoun_resolution,
    "gender_tag": gender_tag,
    "previous_token": previous_token,
    "induction": induction,
}


def generate(model: HookedTransformer, task: str, n: int, seed: int = 0) -> PromptSet:
    """The generator named ``task``, with a clear error listing the tasks that exist."""
    if task not in GENERATORS:
        raise ProbesError(f"unknown task '{task}'; tasks: {', '.join(GENERATORS)}")
    return GENERATORS[task](model, n, seed=seed)


# ---------------------------------------------------------------------------------------------------------------
# Baseline behaviour


def baseline(model: HookedTransformer, prompts: PromptSet, confidence: float = 0.95, seed: int = 0) -> dict:
    """How well the model does the task before any intervention: the number every effect is relative to.

    ``accuracy_top1``: answer is the argmax over the whole vocabulary; ``accuracy_vs_foil``: answer beats the
    foil (logit difference > 0; 50% is chance). Logit differences on clean and corrupt prompts with
    percentile-bootstrap CIs (``confidence``, seeded).
    """
    clean = logit_diff(model, prompts.clean, prompts)
    corrupt = logit_diff(model, prompts.corrupt, prompts)
    out = {
        "task": prompts.task,
        "n": len(prompts),
        "accuracy_top1": answer_is_top1(model, prompts).float().mean().item(),
        "accuracy_vs_foil": (clean > 0).float().mean().item(),
    }
    for side, values in (("clean", clean), ("corrupt", corrupt)):
        _, low, high = bootstrap_mean(values.double().numpy(), confidence, seed)
        out |= {f"{side}_logit_diff": values.mean().item(), f"{side}_logit_diff_ci": [float(low), float(high)]}
    return out

"""Linear probes with control tasks: is the claimed information linearly readable, beyond what the input word gives?

A probe that reads "the antecedent" from a head's output proves little by itself: a flexible enough probe can
memorise any function of the input word. Hewitt & Liang (2019) compare it with a *control task*: each word type
(the token at the probed position) gets a fixed random label, the types split between the classes in proportion
to the real labels (and never all in one class), and the same probe is trained on it with the same folds. Control
accuracy is what the probe gets from memorising word types; *selectivity* = task accuracy - control accuracy.

A probe can fail only where the word cannot give the answer away, so a target is refused as evidence for a head
(``attachable`` False, with the ``reason``) when its label is a function of the probed token (gender read at
"She"/"He", or at the name itself: the token alone predicts it) or when the probed position has fewer than
``MIN_TYPES`` word types (one fixed token such as " to": there is no control task; a handful: a linear probe
memorises them). Such rows still report accuracy against ``chance`` (majority-class rate), which says whether the
information is there at all, not which head put it there; ``strict=True`` raises instead.

Probe: standardised features + L2 logistic regression with a fixed ``C``. Evaluation: grouped k-fold
cross-validation over the first grouping label (e.g. the template); each fold's training side also drops every
row that shares a value of any grouping label (e.g. either name) with its test side, so no template and no name is
on both sides. Uncertainty: a percentile bootstrap over the prompts' groups (the template where the task has one:
prompts sharing a template are not independent; all rows of a drawn group move together) of the out-of-fold
correctness; the selectivity interval resamples task and control correctness together (paired). It covers prompt
sampling, not the variability of refitting.
"""

from __future__ import annotations

import math
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
from jaxtyping import Bool, Float, Int
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from probes.core.errors import ProbesError
from probes.core.io import write_table
from probes.core.memory import require_fits
from probes.core.notebook import result_html
from probes.core.stats import Estimate, cluster_bootstrap_means, percentile_interval
from probes.evidence.activations import NO_PREVIOUS, Activations, ProbePoint, harvest
from probes.models.frozen import frozen_model
from probes.models.protocol import HookedModel
from probes.prompts.promptset import PromptSet

PROMPT = "prompt"  # ``group_by=PROMPT``: each prompt is its own group (rows of one sequence stay together)
NO_HEAD = -1  # the ``head`` column of residual-stream rows
MIN_TYPES = 10  # fewer word types at the probed position: the control task cannot tell reading from memorising
TYPE_DETERMINED = 0.95  # at least this share of rows carry their token type's label: a function of the token
PROBE_COPIES = 3  # a hook's rows as loaded, one point's selected rows, and the scaler's copy of them
MIN_CLASS_ROWS = 10  # rows a previous token needs to be a class: every training side then holds several
COLUMNS = [
    "layer", "head", "hook", "position", "target", "group_by",
    "accuracy", "accuracy_ci_low", "accuracy_ci_high",
    "control_accuracy", "control_accuracy_ci_low", "control_accuracy_ci_high",
    "selectivity", "selectivity_ci_low", "selectivity_ci_high",
    "chance", "type_purity", "n_classes", "n_types", "n_folds", "train_kept", "n", "n_prompts",
    "attachable", "reason",
]  # fmt: skip

Folds = list[tuple[Int[np.ndarray, " train"], Int[np.ndarray, " test"]]]


@dataclass(frozen=True)
class ProbeResult:
    """Probes of a harvest: ``table`` has one row per (point, target), columns :data:`COLUMNS` (``layer``,
    ``head`` (:data:`NO_HEAD` for the residual stream), ``hook``, ``position``, ``target``, ``group_by``; accuracy,
    control accuracy and selectivity each with ``_ci_low``/``_ci_high`` over groups; ``chance`` (majority class),
    ``type_purity``, ``n_classes``, ``n_types``, ``n_folds``, ``train_kept``, ``n`` (rows), ``n_prompts``;
    ``attachable`` and ``reason``: whether a row may be evidence for a head, and why not)."""

    table: pd.DataFrame

    def to_frame(self) -> pd.DataFrame:
        """``table`` (a copy)."""
        return self.table.copy()

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """``path.csv`` and ``path.parquet``, each written atomically (:func:`save_table`)."""
        return save_table(self.table, path)

    @classmethod
    def load(cls, path: str | Path) -> ProbeResult:
        """What :meth:`save` wrote (its parquet file)."""
        return cls(pd.read_parquet(Path(path).with_suffix(".parquet")))

    def _repr_html_(self) -> str:
        """In a notebook: the most selective points that may be evidence for a head, with their intervals."""
        table = self.table
        usable = table[table["attachable"]] if "attachable" in table else table
        sentence = (f"{len(table)} probes ({table['target'].nunique()} targets); {len(usable)} may be evidence for a "
                    "head; selectivity is accuracy above a control task that memorises word types")
        numbers: dict[str, Estimate | str] = {}
        for _, row in usable.nlargest(5, "selectivity").iterrows():
            where = "resid" if row["head"] == NO_HEAD else f"head {int(row['head'])}"
            numbers[f"{row['target']} at layer {int(row['layer'])} {row['hook']} {where}"] = Estimate(
                float(row["selectivity"]), float(row["selectivity_ci_low"]), float(row["selectivity_ci_high"]))
        return result_html("probes: selectivity", sentence, numbers)


@dataclass(frozen=True)
class Target:
    """What a probe should read off each harvested row, and the keys that keep its evaluation honest."""

    name: str
    rows: Int[np.ndarray, " row"]  # indices into the harvested rows that have a label
    labels: Int[np.ndarray, " row"]  # class index of each row, into ``classes``
    classes: np.ndarray  # the class values (names, genders, token ids)
    word_types: Int[np.ndarray, " row"]  # token at the probed position: the control task's input
    groups: np.ndarray  # [row, key] grouping values: folds split on key 0, and no value is on both sides of a fold
    clusters: np.ndarray  # resampling unit of each row for the bootstrap: its prompt's group
    prompts: Int[np.ndarray, " row"]  # prompt of each row
    group_by: str


TargetSpec = Target | Callable[[Activations], Target]


def _label(store: Activations, key: str) -> list:
    if key not in store.labels:
        have = ", ".join(sorted(store.labels)) or "none"
        raise ProbesError(f"the prompt set has no label '{key}' (labels: {have}); use a task that sets it, or another")
    return store.labels[key]


def _group_values(store: Activations, group_by: Sequence[str], prompts: np.ndarray) -> np.ndarray:
    """``[row, key]``: each grouping label's value at the row's prompt (``PROMPT``: the prompt index)."""
    values = np.empty((len(prompts), len(group_by)), dtype=object)
    for j, key in enumerate(group_by):
        values[:, j] = prompts if key == PROMPT else np.asarray(_label(store, key), dtype=object)[prompts]
    return values


def _clusters(store: Activations, prompts: np.ndarray) -> np.ndarray:
    """The bootstrap's unit: the prompt's template where the task has one (templates are not independent draws),
    else the prompt's group."""
    if "template" in store.labels:
        return np.asarray(store.labels["template"], dtype=object)[prompts]
    if store.groups is not None:
        return np.asarray(store.groups, dtype=object)[prompts]
    return prompts


def make_target(
    store: Activations,
    name: str,
    values: np.ndarray,
    rows: np.ndarray | None = None,
    group_by: str | Sequence[str] = PROMPT,
) -> Target:
    """A target from one value per harvested row (``rows`` selects the labelled rows).

    ``group_by``: prompt labels (or ``PROMPT``) none of whose values may be on both sides of a fold; folds are drawn
    over the first. Values are compared across labels, so a name that is the antecedent in one prompt and the
    distractor in another keeps both prompts on one side.
    """
    keys = (group_by,) if isinstance(group_by, str) else tuple(group_by)
    if not keys:
        raise ProbesError(f"target '{name}' needs at least one group_by label (or '{PROMPT}')")
    rows = np.arange(store.n_rows) if rows is None else np.asarray(rows)
    classes, labels = np.unique(np.asarray(values), return_inverse=True)
    if len(classes) < 2:
        raise ProbesError(f"target '{name}' has a single class ({classes[0]!r}) on these prompts: nothing to probe")
    prompts = store.rows["prompt"][rows]
    return Target(
        name=name,
        rows=rows,
        labels=labels,
        classes=classes,
        word_types=store.rows["token"][rows],
        groups=_group_values(store, keys, prompts),
        clusters=_clusters(store, prompts),
        prompts=prompts,
        group_by="+".join(keys),
    )


def prompt_label_target(
    store: Activations, label: str, group_by: str | Sequence[str] = PROMPT, name: str | None = None
) -> Target:
    """Probe for a per-prompt label (``PromptSet.labels[label]``) at every harvested row of that prompt."""
    values = np.asarray(_label(store, label), dtype=object)[store.rows["prompt"]]
    return make_target(store, name or label, values.astype(str), group_by=group_by)  # str: mixed types sort


def antecedent_gender(
    store: Activations, group_by: str | Sequence[str] = ("template", "antecedent", "distractor")
) -> Target:
    """The antecedent's gender, on unseen templates and unseen names: the distractor's name (the other gender)
    would give it away as surely as the antecedent's, so neither may be seen in training."""
    return prompt_label_target(store, "antecedent_gender", group_by=group_by)


def antecedent_identity(store: Activations, group_by: str | Sequence[str] = "template") -> Target:
    """Which name is the antecedent; grouped by template only: a probe can only name names it was trained on."""
    return prompt_label_target(store, "antecedent", group_by=group_by, name="antecedent_identity")


def previous_token_identity(
    store: Activations, min_rows: int = MIN_CLASS_ROWS, group_by: str | Sequence[str] = PROMPT
) -> Target:
    """The previous token's id, over the tokens that are the previous token of at least ``min_rows`` rows.

    A probe can only name tokens it was trained on, so the classes are the previous tokens that recur (rows whose
    previous token is rarer are left out): draw the sequences from a small pool so they do
    (``tasks.previous_token(model, n, vocab=...)``). The control is then a random function of the *current* token:
    a head that merely carries its own token's identity scores high on the control, not on the target.
    """
    if isinstance(min_rows, bool) or not isinstance(min_rows, int) or min_rows < 1:
        raise ProbesError(f"min_rows must be a positive integer, got {min_rows!r}")
    previous = store.rows["previous_token"]
    tokens, counts = np.unique(previous[previous != NO_PREVIOUS], return_counts=True)
    pool = tokens[counts >= min_rows]
    if len(pool) < 2:
        raise ProbesError(
            f"previous_token: {len(pool)} token(s) are the previous token of at least {min_rows} rows, 2 are needed; "
            "draw the sequences from a small token pool (tasks.previous_token(model, n, vocab=...)) or more of them"
        )
    rows = np.flatnonzero(np.isin(previous, pool))
    return make_target(store, "previous_token", previous[rows], rows=rows, group_by=group_by)


# the probe targets an analysis spec can name
TARGETS: dict[str, TargetSpec] = {
    "antecedent_gender": antecedent_gender,
    "antecedent_identity": antecedent_identity,
    "previous_token": previous_token_identity,
}
# the prompt labels each target reads (its value and its cross-validation groups): a run on prompts that lack
# them skips the target (a JSONL pair supplies labels as {"labels": {"antecedent_gender": "f", ...}})
TARGET_LABELS: dict[str, tuple[str, ...]] = {
    "antecedent_gender": ("antecedent_gender", "antecedent"),
    "antecedent_identity": ("antecedent", "template"),
    "previous_token": (),
}


def type_purity(target: Target) -> float:
    """The share of rows whose label is the most common label of their word type: 1 when the probed token fixes the
    label. A type seen once counts as pure: nothing shows its label could differ (names seldom recur, yet a name
    fixes its gender)."""
    _, types = np.unique(target.word_types, return_inverse=True)
    counts = np.zeros((types.max() + 1, len(target.classes)), dtype=int)
    np.add.at(counts, (types, target.labels), 1)
    return float(counts.max(axis=1).sum() / len(types))


def refusal(target: Target) -> str:
    """Why this target cannot be evidence for a head ("" when it can): the word gives the label away, or too few
    word types for a control task."""
    n_types = len(np.unique(target.word_types))
    purity = type_purity(target)
    if purity >= TYPE_DETERMINED:
        return (
            f"'{target.name}' is a function of the probed token: {purity:.0%} of the rows have their token type's label "
            f"({n_types} types, {len(target.labels)} rows), so a probe reads the word, not what a head wrote"
        )
    if n_types < MIN_TYPES:
        return (
            f"'{target.name}' has only {n_types} token type(s) at the probed position (fewer than {MIN_TYPES}): "
            "the control task cannot tell a representation from memorised types"
        )
    return ""


def refusals(table: pd.DataFrame) -> list[str]:
    """One line per target of a probe table that may not be evidence for a head: what, and why (its ``reason``)."""
    refused = table.loc[~table["attachable"].astype(bool)].drop_duplicates(subset="target")
    return [f"probe target {t} not attached to head verdicts: {r}" for t, r in zip(refused["target"], refused["reason"])]


def control_labels(target: Target, seed: int = 0) -> Int[np.ndarray, " row"]:
    """Hewitt & Liang's control task: a fixed label per word type, the types split between classes in proportion
    to the real labels (a seeded shuffle decides which type gets which), and at least two classes."""
    types, inverse = np.unique(target.word_types, return_inverse=True)
    if len(types) < 2:
        raise ProbesError(f"target '{target.name}' has one token type at the probed position: no control task exists")
    # evenly spaced quantiles of the real labels: each class gets its share of the types, not a random draw of it
    spaced = np.sort(target.labels)[((np.arange(len(types)) + 0.5) * len(target.labels) / len(types)).astype(int)]
    if (spaced == spaced[0]).all():  # one class holds nearly every row: give the next most frequent one a type
        counts = np.bincount(target.labels)
        counts[spaced[0]] = -1
        spaced[-1] = counts.argmax()
    return np.random.default_rng(seed).permutation(spaced)[inverse]


def grouped_folds(groups: np.ndarray, n_splits: int = 5) -> Folds:
    """``(train, test)`` row indices: folds over the values of ``groups[:, 0]``, and each training side drops every
    row sharing any value (of any column) with its test side.

    Joining rows that share a name or a template into connected components would leave one component on these
    tasks (names recur across templates), so the test sides are drawn over templates and training loses only the
    rows that would leak.
    """
    values = pd.DataFrame(np.asarray(groups, dtype=object).reshape(len(groups), -1))
    unit_ids, units = pd.factorize(values[0])
    n_units = len(units)
    if n_units < 2:
        raise ProbesError(
            "grouped cross-validation needs at least 2 groups, but every row has the same group key; "
            "group by another label"
        )
    folds: Folds = []
    for outside, test in GroupKFold(n_splits=min(n_splits, n_units)).split(unit_ids, groups=unit_ids):
        seen = list(set(values.iloc[test].to_numpy().ravel()))
        train = outside[~values.iloc[outside].isin(seen).any(axis=1).to_numpy()]
        if len(train) == 0:
            raise ProbesError(
                "a fold has no training rows left: every other row shares a grouping value (a name, a template) with "
                "its test side; use more prompts with more distinct names, or group by fewer labels"
            )
        folds.append((train, test))
    return folds


def out_of_fold_correct(
    features: Float[np.ndarray, "row feature"],
    labels: Int[np.ndarray, " row"],
    folds: Folds,
    C: float = 1.0,
) -> Bool[np.ndarray, " row"]:
    """Whether each row is classified correctly by a probe trained on its fold's training side."""
    correct = np.zeros(len(labels), dtype=bool)
    for train, test in folds:
        seen = np.unique(labels[train])
        if len(seen) == 1:  # a fold can hold one class only: the best a probe can then do is predict it
            correct[test] = labels[test] == seen[0]
            continue
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
        # One BLAS thread: these fits are small, and threads cost ~20x on a busy CPU (measured, 2 shared cores).
        with threadpool_limits(1), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # a near-separable fold stops at max_iter: still fine
            probe.fit(features[train], labels[train])
        correct[test] = probe.predict(features[test]) == labels[test]
    return correct


@dataclass(frozen=True)
class ProbeScore:
    """Cross-validated accuracy of the task probe and of its control, with 95% group-bootstrap intervals (control
    and selectivity NaN with one word type), and whether it may count as evidence for a head."""

    accuracy: float
    accuracy_ci_low: float
    accuracy_ci_high: float
    control_accuracy: float
    control_accuracy_ci_low: float
    control_accuracy_ci_high: float
    selectivity: float
    selectivity_ci_low: float
    selectivity_ci_high: float
    chance: float  # accuracy of always predicting the majority class
    type_purity: float  # share of rows with their token type's label (see :func:`type_purity`)
    n_classes: int
    n_types: int
    n_folds: int
    train_kept: float  # mean share of the rows outside a test fold that its training side kept (the rest leak)
    n: int
    n_prompts: int
    attachable: bool  # valid evidence for a head verdict: see :func:`refusal`
    reason: str  # why not, "" when attachable


def score_probe(
    features: Float[np.ndarray, "row feature"],
    target: Target,
    control: Int[np.ndarray, " row"] | None,
    folds: Folds,
    *,
    C: float = 1.0,
    n_boot: int = 1000,
    seed: int = 0,
) -> ProbeScore:
    """Train and evaluate the probe on the target and on its control task (``None``: there is none), with the same
    folds (:func:`grouped_folds` of the target's groups) and the same probe."""
    task_correct = out_of_fold_correct(features, target.labels, folds, C)
    if control is None:  # NaN flows into the control and selectivity columns
        control_correct = np.full(len(task_correct), np.nan)
    else:
        control_correct = out_of_fold_correct(features, control, folds, C)
    boot = cluster_bootstrap_means(np.column_stack([task_correct, control_correct]), target.clusters, n_boot, seed)
    low, high = percentile_interval(np.column_stack([boot, boot[:, 0] - boot[:, 1]]), 0.95)
    accuracy, control_accuracy = float(task_correct.mean()), float(control_correct.mean())
    reason = refusal(target)
    return ProbeScore(
        accuracy=accuracy,
        accuracy_ci_low=float(low[0]),
        accuracy_ci_high=float(high[0]),
        control_accuracy=control_accuracy,
        control_accuracy_ci_low=float(low[1]),
        control_accuracy_ci_high=float(high[1]),
        selectivity=accuracy - control_accuracy,
        selectivity_ci_low=float(low[2]),
        selectivity_ci_high=float(high[2]),
        chance=float(np.bincount(target.labels).max() / len(target.labels)),
        type_purity=type_purity(target),
        n_classes=len(target.classes),
        n_types=len(np.unique(target.word_types)),
        n_folds=len(folds),
        train_kept=float(np.mean([len(train) / (len(target.labels) - len(test)) for train, test in folds])),
        n=len(target.labels),
        n_prompts=len(np.unique(target.prompts)),
        attachable=not reason,
        reason=reason,
    )


def probe_activations(
    store: Activations,
    targets: Sequence[TargetSpec],
    points: Iterable[ProbePoint] | None = None,
    *,
    n_splits: int = 5,
    C: float = 1.0,
    n_boot: int = 1000,
    seed: int = 0,
    strict: bool = False,
) -> ProbeResult:
    """Probe every target at every point (default: all residual hooks and every head) of a harvest: a tidy table.

    ``targets`` are :class:`Target` objects or functions of the store (``antecedent_gender``,
    ``functools.partial(previous_token_identity, min_rows=20)``). One row per (point, target), columns ``COLUMNS``.
    A target that cannot be evidence for a head gets ``attachable`` False and its ``reason``; with ``strict`` it
    is refused instead (a :class:`ProbesError` before any probe is fitted).
    """
    built = [t if isinstance(t, Target) else t(store) for t in targets]
    if strict:
        for target in built:
            reason = refusal(target)
            if reason:
                raise ProbesError(
                    f"probe target at '{store.at}' refused as evidence for a head: {reason}; probe where the token "
                    f"varies and does not give the label away, or leave '{target.name}' out"
                )
    controls = [control_labels(t, seed) if len(np.unique(t.word_types)) > 1 else None for t in built]
    folds = [grouped_folds(t.groups, n_splits) for t in built]
    points = store.points() if points is None else list(points)
    records, loaded = [], {}
    for point in tqdm(points, desc="probe", unit="point", disable=None):
        if point.hook not in loaded:
            loaded = {}  # one hook in memory at a time: the last one goes before the next is read
            shape = store.manifest["hooks"][point.hook]["shape"]
            require_fits(probe_bytes(store.n_rows, shape), f"probing {point.hook} ({store.n_rows:,} rows)",
                         "probe fewer prompts, or one position (`at`) rather than every position")
            loaded = {point.hook: store.load(point.hook).numpy()}
        acts = loaded[point.hook]
        features = acts if point.head is None else acts[:, point.head]
        for target, control, target_folds in zip(built, controls, folds):
            score = score_probe(features[target.rows], target, control, target_folds, C=C, n_boot=n_boot, seed=seed)
            records.append(
                dict(
                    layer=point.layer,
                    head=NO_HEAD if point.head is None else point.head,
                    hook=point.kind,
                    position=store.at,
                    target=target.name,
                    group_by=target.group_by,
                    **asdict(score),
                )
            )
    return ProbeResult(pd.DataFrame.from_records(records, columns=COLUMNS))


def probe_bytes(n_rows: int, shape: Sequence[int]) -> int:
    """Rough peak bytes of probing one hook of ``n_rows`` rows of ``shape``: its rows as float32, and the copies a
    fit makes of one point's features (the selected rows, scaled)."""
    return PROBE_COPIES * 4 * n_rows * math.prod(shape)


@frozen_model
def probe(
    model: HookedModel,
    prompts: PromptSet,
    targets: Sequence[TargetSpec],
    kinds: Sequence[str] = ("resid_post",),
    layers: Iterable[int] | None = None,
    at: str = "end",
    *,
    out_dir: str | Path | None = None,
    batch_size: int = 32,
    **probe_kwargs,
) -> ProbeResult:
    """Harvest and probe: one call, one table (:class:`ProbeResult`).

    Activations go to a temporary directory removed afterwards, or to ``out_dir`` (replacing an earlier harvest
    there) to be kept for more probes.
    """
    if out_dir is not None:
        store = harvest(model, prompts, out_dir, kinds, layers, at, batch_size=batch_size, overwrite=True)
        return probe_activations(store, targets, **probe_kwargs)
    with tempfile.TemporaryDirectory(prefix="probes-acts-") as tmp:
        store = harvest(model, prompts, Path(tmp) / "activations", kinds, layers, at, batch_size=batch_size)
        return probe_activations(store, targets, **probe_kwargs)


def save_table(table: pd.DataFrame, path: str | Path) -> tuple[Path, Path]:
    """Write ``path.csv`` and ``path.parquet``, each atomically (a reader never sees half a file)."""
    csv, parquet = Path(path).with_suffix(".csv"), Path(path).with_suffix(".parquet")
    write_table(table, csv)
    write_table(table, parquet)
    return csv, parquet

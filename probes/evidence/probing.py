"""Linear probes with control tasks: is the claimed information linearly readable, beyond what the input word gives?

A probe that reads "the antecedent" from a head's output proves little by itself: a flexible enough probe can
memorise any function of the input word. Hewitt & Liang (2019) compare it with a *control task*: each word type
(the token at the probed position) gets a fixed random label, drawn from the real labels' empirical distribution
(so the same classes, similarly balanced), and the same probe is trained on it with the same folds. Control
accuracy is what the probe gets from memorising word types; *selectivity* = task accuracy - control accuracy.
Selectivity is only informative where the probed position has many word types. With one type (a fixed last token
such as " to") the control label is a constant; with a handful (she/he/She/He) a linear probe memorises them; either
way control accuracy is ~1 and selectivity <= 0 whatever the representation holds. There, compare ``accuracy``
with ``chance`` (majority-class rate); the table's ``n_types`` column says how many word types there were.

Probe: standardised features + L2 logistic regression with a fixed ``C``. Evaluation: grouped k-fold
cross-validation (``GroupKFold``), groups from a prompt label (e.g. the antecedent's name, the template), so no
name or template is in both the training and the test fold. Uncertainty: a percentile bootstrap over *prompts*
(all rows of a resampled prompt move together) of the out-of-fold correctness; the selectivity interval resamples
task and control correctness together (paired). It covers prompt sampling, not the variability of refitting.
"""

from __future__ import annotations

import functools
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

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
from transformer_lens import HookedTransformer

from probes.core.errors import ProbesError
from probes.core.io import write_table
from probes.core.stats import cluster_bootstrap_means
from probes.evidence.activations import NO_PREVIOUS, Activations, ProbePoint, harvest
from probes.prompts.promptset import PromptSet

PROMPT = "prompt"  # ``group_by=PROMPT``: each prompt is its own group (rows of one sequence stay together)
NO_HEAD = -1  # the ``head`` column of residual-stream rows
COLUMNS = [
    "layer", "head", "hook", "position", "target", "group_by",
    "accuracy", "accuracy_ci_low", "accuracy_ci_high",
    "control_accuracy", "control_accuracy_ci_low", "control_accuracy_ci_high",
    "selectivity", "selectivity_ci_low", "selectivity_ci_high",
    "chance", "n_classes", "n_types", "n_folds", "n", "n_prompts",
]  # fmt: skip


@dataclass(frozen=True)
class Target:
    """What a probe should read off each harvested row, and the keys that keep its evaluation honest."""

    name: str
    rows: Int[np.ndarray, " row"]  # indices into the harvested rows that have a label
    labels: Int[np.ndarray, " row"]  # class index of each row, into ``classes``
    classes: np.ndarray  # the class values (names, genders, token ids or buckets)
    word_types: Int[np.ndarray, " row"]  # token at the probed position: the control task's input
    groups: np.ndarray  # CV group of each row: a group is never split between training and test
    prompts: Int[np.ndarray, " row"]  # prompt of each row: the bootstrap's resampling unit
    group_by: str


TargetSpec = Target | Callable[[Activations], Target]


def _prompt_groups(store: Activations, group_by: str, prompts: np.ndarray) -> np.ndarray:
    if group_by == PROMPT:
        return prompts
    return np.asarray(_label(store, group_by), dtype=object)[prompts]


def _label(store: Activations, key: str) -> list:
    if key not in store.labels:
        have = ", ".join(sorted(store.labels)) or "none"
        raise ProbesError(f"the prompt set has no label '{key}' (labels: {have}); use a task that sets it, or another")
    return store.labels[key]


def make_target(
    store: Activations, name: str, values: np.ndarray, rows: np.ndarray | None = None, group_by: str = PROMPT
) -> Target:
    """A target from one value per harvested row (``rows`` selects the labelled rows); groups from a prompt label."""
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
        groups=_prompt_groups(store, group_by, prompts),
        prompts=prompts,
        group_by=group_by,
    )


def prompt_label_target(store: Activations, label: str, group_by: str = PROMPT, name: str | None = None) -> Target:
    """Probe for a per-prompt label (``PromptSet.labels[label]``) at every harvested row of that prompt."""
    values = np.asarray(_label(store, label), dtype=object)[store.rows["prompt"]]
    return make_target(store, name or label, values.astype(str), group_by=group_by)  # str: mixed types sort


def antecedent_gender(store: Activations, group_by: str = "antecedent") -> Target:
    """The antecedent's gender; grouped by the antecedent's name, so the probe must generalise to unseen names."""
    return prompt_label_target(store, "antecedent_gender", group_by=group_by)


def antecedent_identity(store: Activations, group_by: str = "template") -> Target:
    """Which name is the antecedent; grouped by template (grouping by name would leave test classes unseen)."""
    return prompt_label_target(store, "antecedent", group_by=group_by, name="antecedent_identity")


def previous_token_identity(store: Activations, n_buckets: int | None = None, group_by: str = PROMPT) -> Target:
    """The previous token's id (or ``id % n_buckets`` to merge classes), at every row that has one.

    The control is then a random function of the *current* token: a head that merely carries its own token's
    identity scores high on the control, not on the target. A probe can only name tokens it was trained on, and
    buckets do not change that: on a real vocabulary draw the sequences from a small pool so tokens recur
    (``tasks.previous_token(model, n, vocab=...)``).
    """
    if n_buckets is not None and n_buckets < 2:
        raise ProbesError(f"n_buckets must be at least 2 (or None for raw token ids), got {n_buckets}")
    previous = store.rows["previous_token"]
    rows = np.flatnonzero(previous != NO_PREVIOUS)
    values = previous[rows] if n_buckets is None else previous[rows] % n_buckets
    name = "previous_token" if n_buckets is None else f"previous_token_mod{n_buckets}"
    return make_target(store, name, values, rows=rows, group_by=group_by)


# the probe targets an analysis spec can name
TARGETS: dict[str, TargetSpec] = {
    "antecedent_gender": antecedent_gender,
    "antecedent_identity": antecedent_identity,
    "previous_token": functools.partial(previous_token_identity, n_buckets=16),
}


def control_labels(target: Target, seed: int = 0) -> Int[np.ndarray, " row"]:
    """Hewitt & Liang's control task: a fixed label per word type, drawn from the real labels' distribution."""
    types, inverse = np.unique(target.word_types, return_inverse=True)
    per_type = np.random.default_rng(seed).choice(target.labels, size=len(types))
    return per_type[inverse]


def out_of_fold_correct(
    features: Float[np.ndarray, "row feature"],
    labels: Int[np.ndarray, " row"],
    groups: np.ndarray,
    n_splits: int = 5,
    C: float = 1.0,
) -> Bool[np.ndarray, " row"]:
    """Whether each row is classified correctly by a probe trained on the folds that do not hold its group."""
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise ProbesError(
            "grouped cross-validation needs at least 2 groups, but every row has the same group key; "
            "group by another label"
        )
    correct = np.zeros(len(labels), dtype=bool)
    for train, test in GroupKFold(n_splits=min(n_splits, n_groups)).split(features, labels, groups):
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
    """Cross-validated accuracy of the task probe and of its control, with 95% prompt-bootstrap intervals."""

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
    n_classes: int
    n_types: int
    n_folds: int
    n: int
    n_prompts: int


def score_probe(
    features: Float[np.ndarray, "row feature"],
    target: Target,
    control: Int[np.ndarray, " row"],
    *,
    n_splits: int = 5,
    C: float = 1.0,
    n_boot: int = 1000,
    seed: int = 0,
) -> ProbeScore:
    """Train and evaluate the probe on the target and on its control task, with the same folds and the same probe."""
    task_correct = out_of_fold_correct(features, target.labels, target.groups, n_splits, C)
    control_correct = out_of_fold_correct(features, control, target.groups, n_splits, C)
    boot = cluster_bootstrap_means(np.column_stack([task_correct, control_correct]), target.prompts, n_boot, seed)
    low, high = np.percentile(np.column_stack([boot, boot[:, 0] - boot[:, 1]]), [2.5, 97.5], axis=0)
    accuracy, control_accuracy = float(task_correct.mean()), float(control_correct.mean())
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
        n_classes=len(target.classes),
        n_types=len(np.unique(target.word_types)),
        n_folds=min(n_splits, len(np.unique(target.groups))),
        n=len(target.labels),
        n_prompts=len(np.unique(target.prompts)),
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
) -> pd.DataFrame:
    """Probe every target at every point (default: all residual hooks and every head) of a harvest: a tidy table.

    ``targets`` are :class:`Target` objects or functions of the store (``antecedent_gender``,
    ``functools.partial(previous_token_identity, n_buckets=64)``). One row per (point, target), columns ``COLUMNS``.
    """
    built = [t if isinstance(t, Target) else t(store) for t in targets]
    controls = [control_labels(t, seed) for t in built]
    points = store.points() if points is None else list(points)
    records, loaded = [], {}
    for point in tqdm(points, desc="probe", unit="point", disable=None):
        if point.hook not in loaded:
            loaded = {point.hook: store.load(point.hook).numpy()}  # one hook in memory at a time
        acts = loaded[point.hook]
        features = acts if point.head is None else acts[:, point.head]
        for target, control in zip(built, controls):
            score = score_probe(
                features[target.rows], target, control, n_splits=n_splits, C=C, n_boot=n_boot, seed=seed
            )
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
    return pd.DataFrame.from_records(records, columns=COLUMNS)


def probe(
    model: HookedTransformer,
    prompts: PromptSet,
    targets: Sequence[TargetSpec],
    kinds: Sequence[str] = ("resid_post",),
    layers: Iterable[int] | None = None,
    at: str = "end",
    *,
    out_dir: str | Path | None = None,
    batch_size: int = 32,
    **probe_kwargs,
) -> pd.DataFrame:
    """Harvest and probe: one call, one table.

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

"""From which layer does the pronoun know its antecedent? Three curves over layers, one value per prompt and layer.

(i) A linear probe at the src token's ``resid_post`` for a label the src token and the names present cannot give
away linearly: "the target is the first-named of the candidates" (the target role against the prompt's other
roles, besides the src and the end). With one female and one male name it is an XOR of the pronoun's gender and
the name order: "she" plus a bag of the names decodes the antecedent's gender and identity, never this. The probe
is scored out of fold (folds over the prompts' groups) beside Hewitt & Liang's control task
(:func:`probes.evidence.probing.control_labels`: a fixed random label per word type), so per prompt and layer the
result holds whether the probe and its control were right: their difference is the selectivity. The word type is
the src token together with the bag of candidate tokens (the names present), what the label must not be a function
of: with the src token alone ("She", "he": a handful of types) any probe memorises the control perfectly.
(ii) Patching ``resid_pre`` at the src token from the clean run into the corrupt one, layer by layer: how much of
the answer the src token's residual stream still carries at each depth. (iii) The same at the end token.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int

from probes.core.errors import ProbesError
from probes.core.notebook import result_html
from probes.evidence.activations import harvest, hook_name
from probes.evidence.patching import patch_activations
from probes.evidence.probing import Target, control_labels, grouped_folds, out_of_fold_correct
from probes.models.frozen import frozen_model
from probes.models.protocol import HookedModel
from probes.prompts.promptset import PromptSet
from probes.prompts.roles import END


@dataclass(frozen=True)
class DepthResult:
    """Per prompt and layer: the probe's and its control's out-of-fold correctness, and the patching effects (in
    logits; ``gap`` is each prompt's clean - corrupt logit difference, what an effect is a fraction of)."""

    src: str
    target: str
    first_named: Int[np.ndarray, " prompt"]  # 1 when the target is the first-named candidate
    groups: Int[np.ndarray, " prompt"]
    probe_correct: Bool[np.ndarray, "prompt layer"]
    control_correct: Bool[np.ndarray, "prompt layer"]
    patch_src: Float[np.ndarray, "prompt layer"]
    patch_end: Float[np.ndarray, "prompt layer"]
    gap: Float[np.ndarray, " prompt"]

    @property
    def chance(self) -> float:
        """The majority class's share: a probe that ignores its input gets this."""
        return float(max(self.first_named.mean(), 1 - self.first_named.mean()))

    def to_frame(self) -> pd.DataFrame:
        """One row per (prompt, layer): ``prompt``, ``layer``, ``group``, ``first_named``, ``probe_correct``,
        ``control_correct``, ``patch_src`` and ``patch_end`` (logits), ``gap`` (logits)."""
        n, n_layers = self.probe_correct.shape
        prompt, layer = (a.ravel() for a in np.meshgrid(np.arange(n), np.arange(n_layers), indexing="ij"))
        return pd.DataFrame({
            "prompt": prompt, "layer": layer, "group": self.groups[prompt], "first_named": self.first_named[prompt],
            "probe_correct": self.probe_correct.ravel(), "control_correct": self.control_correct.ravel(),
            "patch_src": self.patch_src.ravel(), "patch_end": self.patch_end.ravel(), "gap": self.gap[prompt],
        })

    def _repr_html_(self) -> str:
        selectivity = (self.probe_correct.mean(axis=0) - self.control_correct.mean(axis=0)).round(2).tolist()
        return result_html(f"resolution depth: {self.src} -> {self.target}", f"{len(self.gap)} prompts", {
            "probe selectivity per layer": str(selectivity), "chance": f"{self.chance:.2f}",
        })


def candidates(prompts: PromptSet, src: str, target: str) -> list[str]:
    """The target and the roles it competes with: every role of the prompts but ``src`` and the end."""
    prompts.role(src)
    prompts.role(target)
    others = [name for name in prompts.roles if name not in (src, target, END)]
    if not others:
        raise ProbesError(f"'the {target} is the first-named' needs another candidate role besides '{src}' and "
                          f"'{target}'; the prompts have the roles {', '.join(sorted(prompts.roles))}")
    return [target, *others]


def first_named(prompts: PromptSet, src: str, target: str) -> Int[np.ndarray, " prompt"]:
    """1 where the ``target`` role comes before every other candidate role, else 0; refused when there is no other
    candidate or the label never varies."""
    _, *others = candidates(prompts, src, target)
    at = prompts.role(target)
    first = torch.stack([at < prompts.role(name) for name in others]).all(dim=0).long().numpy()
    if first.min() == first.max():
        raise ProbesError(f"the {target} is {'always' if first[0] else 'never'} named before "
                          f"{', '.join(others)} in these prompts: the order label does not vary, nothing to probe")
    return first


def word_types(prompts: PromptSet, src: str, target: str) -> Int[np.ndarray, " prompt"]:
    """The control task's word type of each prompt: its src token and the bag (sorted) of its candidates' tokens."""
    rows = torch.arange(len(prompts))
    names = torch.stack([prompts.clean[rows, prompts.role(r)] for r in candidates(prompts, src, target)], dim=1)
    bags = torch.cat([prompts.clean[rows, prompts.role(src)][:, None], names.sort(dim=1).values], dim=1)
    return np.unique(bags.numpy(), axis=0, return_inverse=True)[1].ravel()


def _probe_curves(
    model: HookedModel, prompts: PromptSet, src: str, target: str, labels: Int[np.ndarray, " prompt"], seed: int
) -> tuple[Bool[np.ndarray, "prompt layer"], Bool[np.ndarray, "prompt layer"]]:
    """Out-of-fold correctness of the probe and of its control task at ``src``'s resid_post, every layer."""
    n, n_layers = len(prompts), model.cfg.n_layers
    groups = prompts.group_index
    with tempfile.TemporaryDirectory(prefix="probes-depth-") as tmp:
        store = harvest(model, prompts, Path(tmp) / "activations", kinds=("resid_post",), at=src)
        probed = Target(
            name="first_named", rows=np.arange(n), labels=labels, classes=np.array([0, 1]),
            word_types=word_types(prompts, src, target), groups=groups[:, None], clusters=groups, prompts=np.arange(n),
            group_by="group",
        )
        control = control_labels(probed, seed)
        folds = grouped_folds(probed.groups)
        task, ctrl = np.zeros((n, n_layers), dtype=bool), np.zeros((n, n_layers), dtype=bool)
        for layer in range(n_layers):
            features = store.load(hook_name("resid_post", layer)).numpy()
            task[:, layer] = out_of_fold_correct(features, labels, folds)
            ctrl[:, layer] = out_of_fold_correct(features, control, folds)
    return task, ctrl


@frozen_model
def resolution_depth(
    model: HookedModel, prompts: PromptSet, src: str = "pronoun", target: str = "antecedent", seed: int = 0
) -> DepthResult:
    """The three curves over layers (see the module's docstring), per prompt."""
    prompts.check_model(model)
    labels = first_named(prompts, src, target)
    probe_correct, control_correct = _probe_curves(model, prompts, src, target, labels, seed)
    n_layers = model.cfg.n_layers
    src_pos, end_pos = prompts.role(src), prompts.end
    positions = sorted(set(src_pos.tolist()) | set(end_pos.tolist()))
    patched = patch_activations(model, prompts, "resid_pre", cells=[(layer, p) for layer in range(n_layers)
                                                                     for p in positions], progress=False)
    effect = patched.effect.double()
    rows = torch.arange(len(prompts))
    return DepthResult(
        src=src, target=target, first_named=labels, groups=prompts.group_index,
        probe_correct=probe_correct, control_correct=control_correct,
        patch_src=effect[rows, :, src_pos].numpy(), patch_end=effect[rows, :, end_pos].numpy(),
        gap=(patched.clean - patched.corrupt).double().numpy(),
    )

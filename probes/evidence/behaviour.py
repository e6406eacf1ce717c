"""How well the model does the task before any intervention: the numbers every effect is read against."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
from transformer_lens import HookedTransformer

from probes.core.stats import CONFIDENCE, Estimate, bootstrap_mean
from probes.evidence.metric import answer_is_top1, logit_diff
from probes.prompts.promptset import PromptSet


@dataclass(frozen=True)
class Behaviour:
    """The task baseline: logit differences (answer minus foil) with bootstrap intervals, and two accuracies.

    ``accuracy_vs_foil``: the answer beats the foil (logit difference > 0; 50% is chance); ``accuracy_top1``: the
    answer is the argmax over the whole vocabulary.
    """

    task: str
    n: int
    clean_logit_diff: Estimate
    corrupt_logit_diff: Estimate
    accuracy_vs_foil: float
    accuracy_top1: float

    def estimates(self) -> dict[str, Estimate]:
        """Every number as an :class:`Estimate` (accuracies without an interval), keyed by name."""
        no_interval = dict(ci_low=math.nan, ci_high=math.nan, n=self.n)
        return {
            "clean_logit_diff": self.clean_logit_diff,
            "corrupt_logit_diff": self.corrupt_logit_diff,
            "accuracy_vs_foil": Estimate(self.accuracy_vs_foil, **no_interval),
            "accuracy_top1": Estimate(self.accuracy_top1, **no_interval),
        }

    def to_frame(self) -> pd.DataFrame:
        """One row per number: value and interval."""
        return pd.DataFrame(
            [{"measure": name, "value": e.value, "ci_low": e.ci_low, "ci_high": e.ci_high, "n": e.n}
             for name, e in self.estimates().items()]
        )


def behaviour(
    model: HookedTransformer, prompts: PromptSet, confidence: float = CONFIDENCE, seed: int = 0
) -> Behaviour:
    """Run the clean and corrupt prompts once and summarise (percentile-bootstrap intervals, seeded)."""
    clean = logit_diff(model, prompts.clean, prompts)
    corrupt = logit_diff(model, prompts.corrupt, prompts)

    def estimate(values) -> Estimate:
        _, low, high = bootstrap_mean(values.double().numpy(), confidence, seed)
        return Estimate(values.mean().item(), float(low), float(high), n=len(values))

    return Behaviour(
        task=prompts.task,
        n=len(prompts),
        clean_logit_diff=estimate(clean),
        corrupt_logit_diff=estimate(corrupt),
        accuracy_vs_foil=(clean > 0).float().mean().item(),
        accuracy_top1=answer_is_top1(model, prompts).float().mean().item(),
    )

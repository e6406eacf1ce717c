"""How well the model does the task before any intervention: the numbers every effect is read against."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from probes.core.notebook import result_html
from probes.core.stats import CONFIDENCE, Estimate, estimate_mean, share_of_groups_above_zero
from probes.evidence.metric import answer_distribution, logit_diff_from_resid, read_off_resid
from probes.models.frozen import frozen_model
from probes.models.protocol import HookedModel
from probes.prompts.promptset import PromptSet


@dataclass(frozen=True)
class BehaviourResult:
    """The task baseline: logit differences (answer minus foil), accuracies and the answer's place in the output
    distribution, each with a bootstrap interval over groups of prompts.

    ``accuracy_vs_foil``: the share of groups where the answer beats the foil (a group's mean logit difference
    > 0, as the claims' task gate counts them; 50% is chance); ``accuracy_top1``: the
    answer is the argmax over the whole vocabulary; ``answer_probability`` and ``answer_rank`` (1 = top) read the
    whole distribution, which a logit difference between two tokens cannot.
    """

    task: str
    n: int
    clean_logit_diff: Estimate
    corrupt_logit_diff: Estimate
    accuracy_vs_foil: Estimate
    accuracy_top1: Estimate
    answer_probability: Estimate
    answer_rank: Estimate

    def estimates(self) -> dict[str, Estimate]:
        """Every number as an :class:`Estimate`, keyed by name."""
        return {
            "clean_logit_diff": self.clean_logit_diff,
            "corrupt_logit_diff": self.corrupt_logit_diff,
            "accuracy_vs_foil": self.accuracy_vs_foil,
            "accuracy_top1": self.accuracy_top1,
            "answer_probability": self.answer_probability,
            "answer_rank": self.answer_rank,
        }

    def to_frame(self) -> pd.DataFrame:
        """One row per number: ``measure`` (a field name), ``value``, ``ci_low``, ``ci_high``, ``n`` (groups)."""
        return pd.DataFrame(
            [{"measure": name, "value": e.value, "ci_low": e.ci_low, "ci_high": e.ci_high, "n": e.n}
             for name, e in self.estimates().items()]
        )

    def _repr_html_(self) -> str:
        sentence = (f"the answer beats the foil in {self.accuracy_vs_foil.value:.0%} of {self.accuracy_vs_foil.n} groups "
                    f"(50% is chance) and is the model's first choice in {self.accuracy_top1.value:.0%}")
        numbers = {name.replace("_", " "): est for name, est in self.estimates().items()}
        return result_html(f"{self.task}: how the model does the task", sentence, numbers)


Behaviour = BehaviourResult  # its name before the result contract (every result's name ends in Result)


@frozen_model
def behaviour(
    model: HookedModel, prompts: PromptSet, confidence: float = CONFIDENCE, seed: int = 0
) -> BehaviourResult:
    """Run the clean and corrupt prompts once and summarise (percentile-bootstrap intervals over groups, seeded)."""
    prompts.check_model(model)
    prompts.check_pairs()
    clean_resid = read_off_resid(model, prompts.clean, prompts)  # one clean pass for the metric and the distribution
    clean = logit_diff_from_resid(model, clean_resid, prompts.answer, prompts.foil)
    corrupt = logit_diff_from_resid(model, read_off_resid(model, prompts.corrupt, prompts), prompts.answer, prompts.foil)
    probability, rank = answer_distribution(model, clean_resid, prompts.answer)

    def estimate(values) -> Estimate:
        return estimate_mean(values.double().numpy(), seed=seed, groups=prompts.group_index, confidence=confidence)

    return BehaviourResult(
        task=prompts.task,
        n=len(prompts),
        clean_logit_diff=estimate(clean),
        corrupt_logit_diff=estimate(corrupt),
        accuracy_vs_foil=share_of_groups_above_zero(
            clean.double().numpy()[:, None], prompts.group_index, confidence, seed
        )[0],
        accuracy_top1=estimate((rank == 1).double()),
        answer_probability=estimate(probability),
        answer_rank=estimate(rank.double()),
    )

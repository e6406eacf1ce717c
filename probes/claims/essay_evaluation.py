"""Settle the essay's claims (:mod:`probes.claims.essay`): measure, estimate over groups, decide, say it.

:data:`SETTLE` maps each claim kind to its settling function ``(model, prompts, claim, thresholds, seed, family)
-> ClaimResult``; :func:`probes.claims.evaluation.evaluate` dispatches to it. Every interval resamples groups of
prompts and is simultaneous over the claim's family times the units the claim tests inside itself (the heads of a
self-update claim, the layers of a depth curve): confidence ``1 - alpha / (family * units)`` each. The rules, in
words, are :data:`probes.claims.verdicts.ESSAY_RULES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pandas as pd
from jaxtyping import Float, Int

from probes.claims.essay import ResolutionDepth, SelfUpdate
from probes.claims.types import ClaimResult, Thresholds
from probes.claims.verdicts import decide_depth, decide_self_update, depth_state, overall_self_update
from probes.core.errors import ProbesError
from probes.core.stats import (
    split_groups,
    Estimate, bootstrap_mean, bootstrap_partial_spearman, level_text, n_units, percentile_interval, ratio_draws,
    resamples_for, simultaneous_confidence,
)
from probes.evidence.depth import DepthResult, resolution_depth
from probes.evidence.self_update import FIRST_POSITIONS, SelfUpdateResult, self_updates
from probes.models.protocol import HookedModel
from probes.prompts.promptset import PromptSet

MIN_SPREAD = 0.01  # a head whose self-attention has a smaller standard deviation does not vary: not applicable


def _check_layer(model: HookedModel, layer: int | None, what: str) -> None:
    n_layers = model.cfg.n_layers
    if layer is not None and not 0 <= layer < n_layers:
        raise ProbesError(f"{what}: layer {layer} does not exist; the model has layers 0..{n_layers - 1}")


def _mean(values: Float[np.ndarray, " row"], groups: Int[np.ndarray, " row"], confidence: float, seed: int) -> Estimate:
    mean, low, high = bootstrap_mean(values, confidence, seed=seed, groups=groups)
    return Estimate(float(mean), float(low), float(high), n=n_units(groups, len(values)))


def _self_update_unit(
    m: SelfUpdateResult, layer: int, head: int | None, confidence: float, seed: int
) -> dict[str, Estimate]:
    """One head's (or, ``head`` None, the layer's) estimates: the partial correlation and the means beside it."""
    if head is None:
        x, y = m.self_attention[:, layer].mean(axis=1), m.block_update[:, layer]
    else:
        x, y = m.self_attention[:, layer, head], m.head_update[:, layer, head]
    (rho,) = bootstrap_partial_spearman(x[:, None], y[:, None], m.position, m.group, seed, confidence)
    sink = m.sink_attention[:, layer].mean(axis=1) if head is None else m.sink_attention[:, layer, head]
    out = {"self_update_correlation": rho, "self_attention": _mean(x, m.group, confidence, seed),
           "sink_attention": _mean(sink, m.group, confidence, seed), "update_size": _mean(y, m.group, confidence, seed)}
    if head is not None:
        out["forced_self_update"] = _mean(m.forced_self[:, layer, head], m.group, confidence, seed)
        out["forced_sink_update"] = _mean(m.forced_sink[:, layer, head], m.group, confidence, seed)
    return out


def _do_nothing(ev: dict[str, Estimate]) -> str:
    """Which place, forced, writes less: the token itself or the sink (or neither, when their intervals overlap)."""
    own, sink = ev["forced_self_update"], ev["forced_sink_update"]
    if own.ci_high < sink.ci_low:
        return "the token itself does the do-nothing job"
    if sink.ci_high < own.ci_low:
        return "the sink does the do-nothing job"
    return "neither place writes clearly less"


def _self_update_sentence(claim: SelfUpdate, ev: dict[str, Estimate], spread: float, verdict: str, rows: int) -> str:
    rho = ev["self_update_correlation"]
    update = "the block's relative update" if claim.head is None else "the head's write"
    text = (f"{claim}: partial rank correlation of self-attention with {update}, given position, "
            f"{rho.value:+.2f} [{rho.ci_low:+.2f}, {rho.ci_high:+.2f}] over {rho.n} groups ({rows} (prompt, position) "
            f"rows from position {FIRST_POSITIONS} on); self-attention {ev['self_attention'].value:.2f} "
            f"(sd {spread:.3f}), sink {ev['sink_attention'].value:.2f}, update {ev['update_size'].value:.3g}")
    if "forced_self_update" in ev:
        own, sink = ev["forced_self_update"], ev["forced_sink_update"]
        text += (f"; forced onto itself the head writes {own.value:.3g} [{own.ci_low:.3g}, {own.ci_high:.3g}], onto "
                 f"the sink {sink.value:.3g} [{sink.ci_low:.3g}, {sink.ci_high:.3g}]: {_do_nothing(ev)}")
    if verdict == "not applicable":
        text += f" (its self-attention does not vary: sd below {MIN_SPREAD})"
    return text


def settle_self_update(
    model: HookedModel, prompts: PromptSet, claim: SelfUpdate, thresholds: Thresholds, seed: int, family: int
) -> ClaimResult:
    """Per head (and per layer, for the heads' mean self-attention and the block's update): the partial rank
    correlation of self-attention with the update's size given position, judged by
    :func:`probes.claims.verdicts.decide_self_update`; the claim's verdict is its one unit's, or for every layer
    :func:`probes.claims.verdicts.overall_self_update` of the layers' verdicts."""
    _check_layer(model, claim.layer, str(claim))
    n_heads = model.cfg.n_heads
    if claim.head is not None and (claim.layer is None or not 0 <= claim.head < n_heads):
        raise ProbesError(f"{claim.head_name} does not exist: the model has {n_heads} heads per layer (and a head "
                          "needs its layer: 'self-update LAYER.HEAD')")
    m = self_updates(model, prompts)
    layers = range(model.cfg.n_layers) if claim.layer is None else [claim.layer]
    heads: list[int | None] = [claim.head] if claim.head is not None else [*range(n_heads), None]
    units = [(layer, head) for layer in layers for head in heads]
    confidence = simultaneous_confidence(thresholds.alpha, family * len(units))
    results, profile = [], []
    for layer, head in units:
        ev = _self_update_unit(m, layer, head, confidence, seed)
        x = m.self_attention[:, layer].mean(axis=1) if head is None else m.self_attention[:, layer, head]
        spread = float(x.std())
        verdict = decide_self_update(ev["self_update_correlation"], spread >= MIN_SPREAD, thresholds)
        unit = SelfUpdate(layer, head)
        said = _self_update_sentence(unit, ev, spread, verdict, len(m.prompt))
        result = ClaimResult(unit, verdict, f"{said} [{_scope(thresholds, family, len(units))}]: {verdict}", ev,
                             thresholds, family=family)
        results.append(result)
        profile += [{"measure": name, "layer": layer, "head": -1 if head is None else head, "value": est.value,
                     "ci_low": est.ci_low, "ci_high": est.ci_high, "verdict": verdict} for name, est in ev.items()]
    if len(results) == 1:
        return replace(results[0], profile=pd.DataFrame(profile))
    layer_rows = [r for r in results if r.claim.head is None]
    verdict = layer_rows[0].verdict if claim.layer is not None else overall_self_update([r.verdict for r in layer_rows])
    lead = layer_rows[0] if claim.layer is not None else None
    counts = pd.Series([r.verdict for r in results if r.claim.head is not None]).value_counts()
    heads_said = ", ".join(f"{c} {v}" for v, c in counts.items())
    forced = [r for r in results if r.claim.head is not None and r.verdict != "not applicable"]
    sink_wins = sum(_do_nothing(r.evidence) == "the sink does the do-nothing job" for r in forced)
    self_wins = sum(_do_nothing(r.evidence) == "the token itself does the do-nothing job" for r in forced)
    summary = (f"heads: {heads_said}; forced onto the sink a head writes clearly less than onto the token itself in "
               f"{sink_wins} of {len(forced)} heads whose self-attention varies, clearly more in {self_wins}")
    if lead is not None:
        sentence = f"{lead.sentence.rsplit(' [', 1)[0]}; {summary}"
    else:
        layers_said = ", ".join(f"{r.claim.layer}: {r.verdict}" for r in layer_rows)
        sentence = f"{claim}: per layer (heads' mean self-attention against the block's update) {layers_said}; {summary}"
    evidence = lead.evidence if lead is not None else {}
    return ClaimResult(claim, verdict, f"{sentence} [{_scope(thresholds, family, len(units))}]: {verdict}", evidence,
                       thresholds, heads=results, family=family, profile=pd.DataFrame(profile))


def _scope(thresholds: Thresholds, family: int, units: int, held_out: str = "") -> str:
    level = simultaneous_confidence(thresholds.alpha, family * units)
    return (f"{held_out or 'tested on all prompts'}; one of {family} claims tested together, {units} units "
            f"inside it; intervals {level_text(level)} each, over groups of prompts")


def _curve(
    values: Float[np.ndarray, "prompt layer"], groups: Int[np.ndarray, " prompt"], confidence: float, seed: int,
    gap: Float[np.ndarray, " prompt"] | None = None,
) -> list[Estimate]:
    """Per layer: the mean over ``values``' rows (``gap`` given: mean(values) / mean(gap), drawn together), with a
    percentile interval over resampled groups."""
    if gap is None:
        value, low, high = bootstrap_mean(values, confidence, seed=seed, groups=groups)
    else:
        value, draws = ratio_draws(values, gap, groups, resamples_for(confidence), seed)
        low, high = percentile_interval(draws, confidence)
    n = n_units(groups, len(values))
    return [Estimate(float(v), float(lo), float(hi), n=n) for v, lo, hi in zip(value, low, high)]


def _depth_curves(d: DepthResult, rows: Int[np.ndarray, " row"], confidence: float, seed: int) -> dict[str, list[Estimate]]:
    groups = d.groups[rows]
    selectivity = d.probe_correct[rows].astype(float) - d.control_correct[rows].astype(float)
    return {
        "depth_selectivity": _curve(selectivity, groups, confidence, seed),
        "depth_accuracy": _curve(d.probe_correct[rows].astype(float), groups, confidence, seed),
        "depth_patch_src": _curve(d.patch_src[rows], groups, confidence, seed, d.gap[rows]),
        "depth_patch_end": _curve(d.patch_end[rows], groups, confidence, seed, d.gap[rows]),
    }


def _first_depth(selectivity: list[Estimate]) -> int | None:
    """The smallest layer from which every layer's selectivity is above chance (its interval above 0)."""
    depth = None
    for layer in reversed(range(len(selectivity))):
        if selectivity[layer].ci_low <= 0:
            break
        depth = layer
    return depth


def settle_depth(
    model: HookedModel, prompts: PromptSet, claim: ResolutionDepth, thresholds: Thresholds, seed: int, family: int
) -> ClaimResult:
    """The probe, patching-at-src and patching-at-end curves over layers; the verdict reads the probe curve
    (:func:`probes.claims.verdicts.decide_depth`). ``claim.layer`` None: the depth is the first layer from which the
    probe reads above chance on discovery groups, and the verdict comes from the held-out groups."""
    _check_layer(model, claim.layer, str(claim))
    n_layers = model.cfg.n_layers
    confidence = simultaneous_confidence(thresholds.alpha, family * n_layers)
    groups = prompts.group_index
    if claim.layer is None:  # before any model work: a split that cannot confirm anything is an input error
        discovery, rows = split_groups(groups, thresholds.confirm_fraction, seed, thresholds.min_prompts)
    else:
        discovery, rows = None, np.arange(len(prompts))
    d = resolution_depth(model, prompts, claim.src, claim.target, seed=seed)
    depth = claim.layer
    if discovery is not None:
        depth = _first_depth(_depth_curves(d, discovery, confidence, seed)["depth_selectivity"])
    curves = _depth_curves(d, rows, confidence, seed)
    selectivity = curves["depth_selectivity"]
    states = [depth_state(est, thresholds) for est in selectivity]
    verdict = decide_depth(states, depth, n_units(groups[rows], len(rows)), thresholds)
    at = n_layers - 1 if depth is None else depth
    evidence = {name: curve[at] for name, curve in curves.items()}
    profile = pd.DataFrame([
        {"measure": name, "layer": layer, "head": -1, "value": est.value, "ci_low": est.ci_low,
         "ci_high": est.ci_high, "verdict": states[layer] if name == "depth_selectivity" else ""}
        for name, curve in curves.items() for layer, est in enumerate(curve)
    ])
    reads = [layer for layer, s in enumerate(states) if s == "reads"]
    chance = [layer for layer, s in enumerate(states) if s == "at chance"]
    sel, acc = selectivity[at], curves["depth_accuracy"][at]
    src_patch, end_patch = curves["depth_patch_src"][at], curves["depth_patch_end"][at]
    chosen = ("no depth: the probe is above chance at no final run of layers on the discovery groups"
              if depth is None else f"depth {depth}" + (" (chosen on the discovery groups)" if discovery is not None else ""))
    sentence = (
        f"{claim}: {chosen}; a probe for 'the {claim.target} is the first-named candidate' (chance {d.chance:.2f}) at "
        f"the {claim.src}'s resid_post reads above chance (selectivity interval above 0) at layers "
        f"{reads or 'none'} and at chance (below {thresholds.selectivity}) at layers {chance or 'none'}; at layer {at} "
        f"selectivity {sel.value:+.2f} [{sel.ci_low:+.2f}, {sel.ci_high:+.2f}] (accuracy {acc.value:.2f}); patching "
        f"resid_pre there moves {src_patch.value:+.0%} [{src_patch.ci_low:+.0%}, {src_patch.ci_high:+.0%}] of the "
        f"gap at the {claim.src} and {end_patch.value:+.0%} [{end_patch.ci_low:+.0%}, {end_patch.ci_high:+.0%}] at "
        "the end"
    )
    held_out = "" if discovery is None else (f"depth chosen on {len(discovery)} discovery prompts, tested on "
                                             f"{len(rows)} held-out prompts")
    return ClaimResult(claim, verdict, f"{sentence} [{_scope(thresholds, family, n_layers, held_out)}]: {verdict}",
                       evidence, thresholds, family=family, profile=profile, selected=discovery is not None,
                       discovery=None if discovery is None else discovery.tolist(),
                       confirmation=None if discovery is None else rows.tolist())


SETTLE: dict[type, Callable[..., ClaimResult]] = {SelfUpdate: settle_self_update, ResolutionDepth: settle_depth}

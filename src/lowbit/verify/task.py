"""The report's task metrics: chosen once from the reference's outputs (or given), computed for every
candidate with sample counts and intervals, the headline first; FP32 gets only the metrics scored
against labels (against itself every agreement is trivially 1)."""

from __future__ import annotations

from lowbit.errors import ConfigError
from lowbit.metrics.infer import choose_metrics
from lowbit.metrics.results import FEW_SAMPLES, evaluate, output_failures
from lowbit.metrics.spec import MetricChoice


def _score(choice: MetricChoice, ref: dict, cand: dict, labels) -> dict:
    try:
        return evaluate(choice, ref, cand, labels).to_dict()
    except (ConfigError, ValueError, IndexError, TypeError) as e:  # the metric does not fit these outputs
        if choice.source != "given":
            raise
        shapes = ", ".join(f"{k} {list(v.shape[1:])}" for k, v in ref.items())
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"metric {choice.name} cannot score this model's outputs (per sample: {shapes}): "
                          f"{first}. Choose another with --metric (see `lowbit list metrics`).") from None


def fill_task_metrics(report_data: dict, variants: list[dict], accs: dict, given: MetricChoice | None) -> None:
    """variants[0] is FP32; accs: label -> FidelityAccumulator that collected outputs."""
    if not accs:
        return
    first = next(iter(accs.values()))
    ref = first.reference.stacked()
    labels = first.reference.stacked_labels()
    if not ref:
        report_data["notes"].append("Task metrics: the outputs differ in shape from sample to sample; only "
                                    "the pooled fidelity figures are shown.")
        return
    choices = choose_metrics(ref, given, labels)
    head = choices[0]
    report_data["metric"] = {"headline": head.name, "source": head.source, "reason": head.reason,
                             "definition": head.definition, "higher_is_better": head.higher_is_better,
                             "outputs": list(head.outputs)}
    needs_labels = [c for c in choices if getattr(c.metric, "needs_labels", False)]
    variants[0]["metrics"] = [_score(c, ref, ref, labels) for c in needs_labels]
    for v in variants[1:]:
        acc = accs[v["label"]]
        cand = acc.outputs.stacked()
        v["metrics"] = [_score(c, ref, cand, labels) for c in choices]
        v["failures"] = output_failures(ref, cand)
    n = len(next(iter(ref.values())))
    if first.reference.full:
        report_data["notes"].append(f"Task metrics on the first {n} samples: holding more outputs would pass "
                                    "lowbit's memory cap.")
    if n < FEW_SAMPLES:
        report_data["notes"].append(f"Fidelity on n={n} sample(s): too few for a reliable figure (one sample moves "
                                    f"an agreement by {100 / max(n, 1):.0f}%); see the 95% intervals, and give at "
                                    f"least {FEW_SAMPLES} evaluation samples.")


def headline(v: dict) -> dict | None:
    """The variant's headline metric result (the first), or None."""
    m = v.get("metrics") or []
    return m[0] if m and isinstance(m[0], dict) else None


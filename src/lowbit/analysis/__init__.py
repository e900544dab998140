"""Amenability: which layers break under quantization and why (sensitivity), and a search for
the smallest / fastest per-layer precision mix that stays inside an accuracy budget."""

from lowbit.analysis.evaluate import PlanEvaluator
from lowbit.analysis.mixed import mixed_plan
from lowbit.analysis.search import SearchResult, search_precisions
from lowbit.analysis.sensitivity import LayerSensitivity, analyze_layers

__all__ = ["PlanEvaluator", "mixed_plan", "SearchResult", "search_precisions", "LayerSensitivity", "analyze_layers"]

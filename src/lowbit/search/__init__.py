"""Amenability: which layers break under quantization and why (sensitivity), and a search for
the smallest / fastest per-layer precision mix that stays inside an accuracy budget."""

from lowbit.search.evaluate import PlanEvaluator
from lowbit.search.mixed import mixed_plan
from lowbit.search.precision import SearchResult, search_precisions
from lowbit.search.sensitivity import LayerSensitivity, analyze_layers

__all__ = ["PlanEvaluator", "mixed_plan", "SearchResult", "search_precisions", "LayerSensitivity", "analyze_layers"]

"""Accuracy-recovery algorithms. Each is a frozen config registered by name, and a function
(model, plan, context) -> (model, plan): it may change the float weights and refine the plan,
never write Q/DQ nodes itself."""

from lowbit.algorithms.base import ALGORITHMS, Algorithm, AlgorithmContext, register_algorithm

__all__ = ["ALGORITHMS", "Algorithm", "AlgorithmContext", "register_algorithm"]

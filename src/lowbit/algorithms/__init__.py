"""Accuracy-recovery algorithms. Each is a frozen config registered by name, and a function
(model, plan, context) -> (model, plan): it may change the float weights and refine the plan,
never write Q/DQ nodes itself."""

from lowbit.algorithms.adaround import AdaRound
from lowbit.plan.algorithm import ALGORITHMS, Algorithm, AlgorithmContext, register_algorithm
from lowbit.algorithms.bias_correction import BiasCorrection
from lowbit.algorithms.bn_fold import BatchNormFolding
from lowbit.algorithms.equalization import CrossLayerEqualization
from lowbit.algorithms.gptq import GPTQ
from lowbit.algorithms.keep_if_better import KeepIfBetter
from lowbit.algorithms.smoothquant import SmoothQuant

__all__ = ["ALGORITHMS", "Algorithm", "AlgorithmContext", "register_algorithm", "AdaRound", "BatchNormFolding",
           "BiasCorrection", "CrossLayerEqualization", "GPTQ", "KeepIfBetter", "SmoothQuant"]

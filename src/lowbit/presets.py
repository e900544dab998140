"""Named presets: a QuantConfig for each common intent, and the transformer recipe chosen per model.

Kept apart from `lowbit.config` so that the config (what the user asks for) imports nothing above
it: a preset names algorithms and transformer steps, which themselves read configs.
"""

from __future__ import annotations

from collections.abc import Callable

from lowbit.algorithms import GPTQ, BiasCorrection, CrossLayerEqualization, KeepIfBetter, SmoothQuant
from lowbit.calibration import MSE, Percentile
from lowbit.config import QuantConfig, Scheme
from lowbit.core.dtypes import int4, uint8
from lowbit.core.granularity import PerChannel, PerGroup, PerTensor
from lowbit.errors import ConfigError, did_you_mean
from lowbit.plan.recipes import is_hybrid
from lowbit.transformers.outliers import OutlierSplit
from lowbit.transformers.patterns import find_patterns
from lowbit.transformers.pipeline import GPTQ_TRANSFORMER


def _int8_accurate() -> QuantConfig:
    # Each algorithm acts only where the graph has what it needs (CLE on conv pairs, bias
    # correction on layers with weights); GPTQ rounding is kept only if the model's output gets
    # closer to FP32 (it helps some networks and hurts others: algorithms/keep_if_better.py). A
    # graph with attention and layer norms gets the int8-transformer recipe instead
    # (transformer='auto', resolved by resolve_transformer).
    return QuantConfig(precision="int8", transformer="auto",
                       activations=Scheme(uint8, PerTensor(), symmetric=False, calibration=Percentile(99.99)),
                       algorithms=(CrossLayerEqualization(), KeepIfBetter(GPTQ(percdamp=0.1, act_order=True, rows_per_sample=1024),
                                                                 then=(BiasCorrection(),))))


def _w4a8() -> QuantConfig:
    # 4-bit weights cost most where rounding is plain: error-minimising rounding recovers much of
    # it. GPTQ, not AdaRound, by default: on 2 CPU cores AdaRound takes an hour on MobileNetV2
    # (QuantConfig(algorithms=(AdaRound(time_budget_s=...),)) when that time is there).
    return QuantConfig(precision="int8", weights=Scheme(int4, PerChannel(axis=0), symmetric=True),
                       activations=Scheme(uint8, PerTensor(), symmetric=False, calibration=Percentile(99.99)),
                       algorithms=(GPTQ(),), objective="size")


def _int4() -> QuantConfig:
    # MatMul / Gemm: 4-bit weights in blocks of 32 along K (MatMulNBits); Conv: 4-bit per-channel
    # weights on the int8 kernel with 8-bit activations (no 4-bit Conv kernel exists). GPTQ rounds
    # both (lowbit.plan.int4_recipe), columns by decreasing Hessian diagonal with 10% dampening, as in the
    # transformer recipe: on MiniLM calibration sentences the fit did not see (not the evaluation
    # split) mean cosine 0.9790 -> 0.9822, worst 0.927 -> 0.950 against the paper's defaults.
    return QuantConfig(precision="int4", weights=Scheme(int4, PerGroup(0, 32), symmetric=True),
                       activations=Scheme(uint8, PerTensor(), symmetric=False, calibration=Percentile(99.99)),
                       algorithms=(GPTQ(percdamp=0.1, act_order=True),), objective="size")


def _int8_transformer() -> QuantConfig:
    return QuantConfig(precision="int8", transformer=True,
                       activations=Scheme(uint8, PerTensor(), symmetric=False, calibration=MSE()),
                       algorithms=(SmoothQuant(0.5, ("qkv", "ffn_up")), OutlierSplit(), GPTQ_TRANSFORMER))


def _int8_mixed(config: QuantConfig) -> QuantConfig:
    """`config` (the int8 preset's CNN recipe) with the transformer recipe's float-stage steps
    added (SmoothQuant and outlier split act on the blocks' linear layers only)."""
    return config.with_(transformer="mixed",
                        algorithms=(SmoothQuant(0.5, ("qkv", "ffn_up")), OutlierSplit(), *config.algorithms))


def _has_conv(model) -> bool:
    return any(n.op_type in ("Conv", "ConvTranspose") for n in model.graph.node)


def resolve_transformer(config: QuantConfig, model) -> QuantConfig:
    """`config` with transformer='auto' decided for `model` (an onnx.ModelProto): the int8-transformer
    recipe (keeping `config`'s keep_float, target, seed) if lowbit.transformers.patterns finds
    attention and layer norms, or linear layers with GELU and no convolution (a transformer's
    feed-forward stack alone), else `config` with transformer=False. A hybrid (transformer blocks
    in a network whose weights lie substantially outside them, lowbit.plan.recipes.is_hybrid) gets
    `config` with transformer='mixed'. Other configs pass unchanged."""
    if config.transformer != "auto":
        return config
    patterns = find_patterns(model)
    if patterns.is_transformer() or (patterns.is_gelu_mlp() and not _has_conv(model)):
        if is_hybrid(model, patterns):  # convolutions around the blocks: each region its recipe
            return _int8_mixed(config)
        return _int8_transformer().with_(keep_float=config.keep_float, target=config.target, seed=config.seed,
                                         keep_io_types=config.keep_io_types)
    return config.with_(transformer=False)


PRESETS: dict[str, tuple[Callable[[], QuantConfig], str]] = {
    "fp16": (lambda: QuantConfig(precision="fp16"),
             "Halves size. On CPUs with FP16 arithmetic (arm64 target) FP16 weights and activations, unsafe "
             "ops in FP32; elsewhere FP16-stored weights with FP32 arithmetic (FP32 speed and accuracy)."),
    "int8": (_int8_accurate,
             "Static INT8 QDQ, accuracy first: percentile-calibrated uint8 activations, per-channel weights, "
             "cross-layer equalization, GPTQ rounding where it clearly helps, bias correction; slow INT8 layers of this CPU stay FP32. "
             "A transformer graph (attention + layer norms), or linear layers with GELU and no convolution, gets "
             "the int8-transformer recipe."),
    "int8-transformer": (lambda: _int8_transformer(),
                         "Transformer INT8: linear layers u8 x s8, layer norm / softmax / GELU / residual adds in "
                         "float; SmoothQuant on the norm outputs, outlier channels split off in float, MSE ranges, "
                         "GPTQ weights."),
    "w4a8": (_w4a8, "4-bit per-channel weights with error-minimising rounding (GPTQ), 8-bit activations: "
                     "the smallest model."),
    "int4": (_int4, "4-bit weights: MatMul / Gemm in blocks of 32 along K run by MatMulNBits (weight-only, "
                     "float activations; --block-size, --accuracy-level), Conv 4-bit per channel on the int8 "
                     "kernel with 8-bit activations, embedding tables in 4-bit blocks; GPTQ rounding. For "
                     "transformer / MatMul weights (MiniLM: 16.6% of FP32, cosine 0.982); a CNN loses much "
                     "(MobileNetV2 top-1 agreement 0.53): there --preset int8 --max-drop moves only the layers "
                     "that tolerate it to 4 bits."),
    "int8-fast": (lambda: QuantConfig(precision="int8"),
                  "Static INT8 QDQ, quantize fast: min-max calibration, no optimisation."),
    "int8-dynamic": (lambda: QuantConfig(precision="int8-dynamic"),
                     "No calibration data: INT8 MatMul/Gemm weights with activations quantized at run time; "
                     "Conv weights stored INT8 and computed in FP32 (ONNX Runtime's dynamic Conv is slow), "
                     "GPTQ-rounded when calibration data is given."),
}
"""Preset name -> (QuantConfig factory, one-line description); `preset(name)` builds one."""


def preset(name: str) -> QuantConfig:
    """The QuantConfig of a named preset ('fp16', 'int8', 'int8-dynamic').

    >>> preset("int8").activations.dtype.name
    'uint8'
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown preset or precision '{name}'." + did_you_mean(name, PRESETS))
    return PRESETS[name][0]()


def as_config(config: QuantConfig | str | None) -> QuantConfig:
    if config is None:
        return preset("int8")
    if isinstance(config, str):
        return preset(config)
    if isinstance(config, QuantConfig):
        return config
    raise ConfigError(f"config must be a QuantConfig or a preset name such as 'int8'; got {type(config).__name__}")

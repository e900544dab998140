"""What the user asks for: a QuantConfig built from typed Schemes, or a named preset."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from lowbit.calibration import CalibrationMethod, MinMax
from lowbit.algorithms.base import algorithm_from_dict
from lowbit.calibration.base import calibration_from_dict
from lowbit.core.dtypes import QDtype, dtype_by_name, int8, uint8
from lowbit.core.granularity import Granularity, PerChannel, PerGroup, PerTensor, granularity_from_dict
from lowbit.errors import ConfigError, did_you_mean

PRECISIONS = ("fp16", "int8", "int8-dynamic", "int4")


@dataclass(frozen=True)
class Scheme:
    """How one class of tensors (weights or activations) is quantized.

    >>> Scheme(int8, PerChannel(axis=0), symmetric=True)
    """

    dtype: QDtype = int8
    granularity: Granularity = PerTensor()
    symmetric: bool = True
    calibration: CalibrationMethod = MinMax()

    def __post_init__(self) -> None:
        if not isinstance(self.dtype, QDtype):
            raise ConfigError(f"Scheme.dtype must be a lowbit dtype such as lowbit.int8; got {self.dtype!r}")
        if not isinstance(self.granularity, (PerTensor, PerChannel, PerGroup)):
            raise ConfigError(
                f"Scheme.granularity must be PerTensor(), PerChannel(axis) or PerGroup(axis, size); "
                f"got {self.granularity!r}"
            )
        if isinstance(self.granularity, PerGroup) and self.granularity.size < 2:
            raise ConfigError(f"PerGroup size must be at least 2; got {self.granularity.size}")
        if not isinstance(self.calibration, CalibrationMethod):
            raise ConfigError(f"Scheme.calibration must be a calibration method such as MinMax(); "
                              f"got {self.calibration!r}")

    @property
    def narrow(self) -> bool:
        """Signed symmetric grids drop -2**(b-1) so that +-max both map exactly (int8: [-127, 127])."""
        return self.symmetric and self.dtype.signed

    def to_dict(self) -> dict:
        g = self.granularity
        return {
            "dtype": self.dtype.name,
            "granularity": {"kind": g.kind, **({"axis": g.axis} if hasattr(g, "axis") else {}),
                            **({"size": g.size} if isinstance(g, PerGroup) else {})},
            "symmetric": self.symmetric,
            "calibration": self.calibration.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Scheme":
        return cls(dtype_by_name(d["dtype"]), granularity_from_dict(d["granularity"]),
                   bool(d["symmetric"]), calibration_from_dict(d["calibration"]))


@dataclass(frozen=True)
class QuantConfig:
    """Everything a quantize call needs to know besides the model and the data.

    >>> QuantConfig(precision="int8", keep_float=("/classifier/*",))
    """

    precision: str = "int8"
    weights: Scheme = Scheme(int8, PerChannel(axis=0), symmetric=True)
    # uint8 activations: on AVX2 CPUs ONNX Runtime only fuses u8 activations x s8 weights fully.
    activations: Scheme = Scheme(uint8, PerTensor(), symmetric=False)
    keep_float: tuple[str, ...] = ()
    # applied in order within their stage ('float' ones before calibration, 'plan' ones after)
    algorithms: tuple = ()
    op_types: tuple[str, ...] | None = None
    keep_io_types: bool = True
    # 'latency': layers whose INT8 kernel is measured slower than FP32 on this machine stay FP32;
    # 'size': every layer that can be INT8 is, however slow.
    objective: str = "latency"
    # transformer-aware placement (lowbit.transformers.patterns): linear layers' inputs and weights
    # in INT8, layer norm / softmax / GELU / residual adds in float. 'auto': the int8-transformer
    # recipe when the graph has attention and layer norms, else False (resolve_transformer).
    # 'mixed': the transformer recipe for the blocks' nodes, the CNN recipe elsewhere (lowbit.recipes).
    transformer: bool | str = False
    # CPU the model is for: 'auto' (this machine), 'avx2', 'vnni', 'arm64'. Decides the weight grid.
    target: str = "auto"
    seed: int = 0
    # int4 only: MatMulNBits' compute. 0 = float (the 4-bit blocks are unpacked in the kernel), 4 = int8
    # (its input quantized per block at run time). On MiniLM (AVX-512 VNNI, 128 tokens) 4 ran at 0.84x
    # of FP32 where 0 ran at 1.02x, at the same fidelity: 0 by default. lowbit.int4_recipe
    accuracy_level: int = 0
    extras: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision '{self.precision}'." + did_you_mean(self.precision, PRECISIONS))
        if not isinstance(self.activations.granularity, PerTensor):
            raise ConfigError("activations must be quantized PerTensor(): ONNX Runtime's integer kernels "
                              f"take one activation scale per tensor; got {self.activations.granularity}")
        from lowbit.hardware import target_traits

        target_traits(self.target)  # validates the name
        if self.objective not in ("latency", "size"):
            raise ConfigError(f"objective must be 'latency' or 'size'; got '{self.objective}'."
                              + did_you_mean(self.objective, ("latency", "size")))
        if self.transformer not in (True, False, "auto", "mixed"):
            raise ConfigError(f"transformer must be True, False, 'auto' or 'mixed'; got {self.transformer!r}")
        if self.accuracy_level not in (0, 1, 2, 3, 4) or isinstance(self.accuracy_level, bool):
            raise ConfigError(f"accuracy_level is MatMulNBits' compute level, 0 (float) to 4 (int8); got "
                              f"{self.accuracy_level!r}")
        if self.precision == "int4":
            from lowbit.int4_recipe import check_int4_weights

            check_int4_weights(self.weights)
        elif self.accuracy_level:
            raise ConfigError(f"accuracy_level is for precision 'int4' (MatMulNBits blocks); this config's "
                              f"precision is '{self.precision}'")
        if isinstance(self.keep_float, str):
            object.__setattr__(self, "keep_float", (self.keep_float,))
        object.__setattr__(self, "keep_float", tuple(self.keep_float))
        if self.op_types is not None:
            object.__setattr__(self, "op_types", tuple(self.op_types))
        from lowbit.algorithms import Algorithm

        object.__setattr__(self, "algorithms", tuple(self.algorithms))
        for a in self.algorithms:
            if not isinstance(a, Algorithm):
                raise ConfigError(f"algorithms must be lowbit algorithm objects such as CrossLayerEqualization(); "
                                  f"got {a!r}")

    def with_(self, **changes) -> "QuantConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return {
            "precision": self.precision,
            "weights": self.weights.to_dict(),
            "activations": self.activations.to_dict(),
            "keep_float": list(self.keep_float),
            "algorithms": [a.to_dict() for a in self.algorithms],
            "op_types": list(self.op_types) if self.op_types is not None else None,
            "keep_io_types": self.keep_io_types,
            "target": self.target,
            "objective": self.objective,
            "transformer": self.transformer,
            "seed": self.seed,
            # only where it means something: an int8 plan's config (and its model's bytes) stay as they were
            **({"accuracy_level": self.accuracy_level} if self.precision == "int4" else {}),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "QuantConfig":
        return cls(
            precision=d["precision"],
            weights=Scheme.from_dict(d["weights"]),
            activations=Scheme.from_dict(d["activations"]),
            keep_float=tuple(d.get("keep_float", ())),
            algorithms=tuple(algorithm_from_dict(a) for a in d.get("algorithms", ())),
            op_types=tuple(d["op_types"]) if d.get("op_types") is not None else None,
            keep_io_types=d.get("keep_io_types", True),
            target=d.get("target", "auto"),
            objective=d.get("objective", "latency"),
            transformer=d.get("transformer", False),
            seed=d.get("seed", 0),
            accuracy_level=d.get("accuracy_level", 0),
        )


# --- presets: a name for each common intent ------------------------------------------------------

def _int8_accurate() -> QuantConfig:
    from lowbit.algorithms import GPTQ, BiasCorrection, CrossLayerEqualization, KeepIfBetter
    from lowbit.calibration import Percentile

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
    from lowbit.algorithms import GPTQ
    from lowbit.calibration import Percentile
    from lowbit.core.dtypes import int4

    # 4-bit weights cost most where rounding is plain: error-minimising rounding recovers much of
    # it. GPTQ, not AdaRound, by default: on 2 CPU cores AdaRound takes an hour on MobileNetV2
    # (QuantConfig(algorithms=(AdaRound(time_budget_s=...),)) when that time is there).
    return QuantConfig(precision="int8", weights=Scheme(int4, PerChannel(axis=0), symmetric=True),
                       activations=Scheme(uint8, PerTensor(), symmetric=False, calibration=Percentile(99.99)),
                       algorithms=(GPTQ(),), objective="size")


def _int4() -> QuantConfig:
    from lowbit.algorithms import GPTQ
    from lowbit.calibration import Percentile
    from lowbit.core.dtypes import int4

    # MatMul / Gemm: 4-bit weights in blocks of 32 along K (MatMulNBits); Conv: 4-bit per-channel
    # weights on the int8 kernel with 8-bit activations (no 4-bit Conv kernel exists). GPTQ rounds
    # both (lowbit.int4_recipe), columns by decreasing Hessian diagonal with 10% dampening, as in the
    # transformer recipe: on MiniLM calibration sentences the fit did not see (not the evaluation
    # split) mean cosine 0.9790 -> 0.9822, worst 0.927 -> 0.950 against the paper's defaults.
    return QuantConfig(precision="int4", weights=Scheme(int4, PerGroup(0, 32), symmetric=True),
                       activations=Scheme(uint8, PerTensor(), symmetric=False, calibration=Percentile(99.99)),
                       algorithms=(GPTQ(percdamp=0.1, act_order=True),), objective="size")


def _int8_transformer() -> QuantConfig:
    from lowbit.algorithms import SmoothQuant
    from lowbit.calibration import MSE
    from lowbit.transformers.outliers import OutlierSplit
    from lowbit.transformers.pipeline import GPTQ_TRANSFORMER

    return QuantConfig(precision="int8", transformer=True,
                       activations=Scheme(uint8, PerTensor(), symmetric=False, calibration=MSE()),
                       algorithms=(SmoothQuant(0.5, ("qkv", "ffn_up")), OutlierSplit(), GPTQ_TRANSFORMER))


def _int8_mixed(config: QuantConfig) -> QuantConfig:
    """`config` (the int8 preset's CNN recipe) with the transformer recipe's float-stage steps
    added (SmoothQuant and outlier split act on the blocks' linear layers only)."""
    from lowbit.algorithms import SmoothQuant
    from lowbit.transformers.outliers import OutlierSplit

    return config.with_(transformer="mixed",
                        algorithms=(SmoothQuant(0.5, ("qkv", "ffn_up")), OutlierSplit(), *config.algorithms))


def resolve_transformer(config: QuantConfig, model) -> QuantConfig:
    """`config` with transformer='auto' decided for `model` (an onnx.ModelProto): the int8-transformer
    recipe (keeping `config`'s keep_float, target, seed) if lowbit.transformers.patterns finds
    attention and layer norms, else `config` with transformer=False. A hybrid (transformer blocks
    in a network whose weights lie substantially outside them, lowbit.recipes.is_hybrid) gets
    `config` with transformer='mixed'. Other configs pass unchanged."""
    if config.transformer != "auto":
        return config
    from lowbit.transformers.patterns import find_patterns

    patterns = find_patterns(model)
    if patterns.is_transformer():
        from lowbit.recipes import is_hybrid

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
             "A transformer graph (attention + layer norms) gets the int8-transformer recipe."),
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
                     "Conv weights stored INT8 and computed in FP32 (ONNX Runtime's dynamic Conv is slow)."),
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


def run_label(precision: str, weights_dtype: str | None = None) -> str:
    """The name a run is reported under: its precision, with the weight width where that is not the
    precision's own ('w4a8': 4-bit weights, 8-bit activations; never reported as 'int8').

    >>> run_label("int8", "int4")
    'w4a8'
    """
    if precision != "int8" or weights_dtype in (None, "int8", "uint8"):
        return precision
    from lowbit.core.dtypes import dtype_by_name

    return f"w{dtype_by_name(weights_dtype).bits}a8"


def as_config(config: QuantConfig | str | None) -> QuantConfig:
    if config is None:
        return preset("int8")
    if isinstance(config, str):
        return preset(config)
    if isinstance(config, QuantConfig):
        return config
    raise ConfigError(f"config must be a QuantConfig or a preset name such as 'int8'; got {type(config).__name__}")

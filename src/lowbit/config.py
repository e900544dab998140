"""What the user asks for: a QuantConfig built from typed Schemes (named presets: lowbit.presets)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from lowbit.calibration import CalibrationMethod, MinMax
from lowbit.plan.algorithm import Algorithm, algorithm_from_dict
from lowbit.calibration.base import calibration_from_dict
from lowbit.core.dtypes import QDtype, dtype_by_name, int8, uint8
from lowbit.core.granularity import Granularity, PerChannel, PerGroup, PerTensor, granularity_from_dict
from lowbit.errors import ConfigError, did_you_mean
from lowbit.target.cpu import target_traits

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
    # 'mixed': the transformer recipe for the blocks' nodes, the CNN recipe elsewhere (lowbit.plan.recipes).
    transformer: bool | str = False
    # CPU the model is for: 'auto' (this machine), 'avx2', 'vnni', 'arm64'. Decides the weight grid.
    target: str = "auto"
    seed: int = 0
    # int4 only: MatMulNBits' compute. 0 = float (the 4-bit blocks are unpacked in the kernel), 4 = int8
    # (its input quantized per block at run time). On MiniLM (AVX-512 VNNI, 128 tokens) 4 ran at 0.84x
    # of FP32 where 0 ran at 1.02x, at the same fidelity: 0 by default. lowbit.plan.int4_recipe
    accuracy_level: int = 0
    extras: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision '{self.precision}'." + did_you_mean(self.precision, PRECISIONS))
        if not isinstance(self.activations.granularity, PerTensor):
            raise ConfigError("activations must be quantized PerTensor(): ONNX Runtime's integer kernels "
                              f"take one activation scale per tensor; got {self.activations.granularity}")
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
            check_int4_weights(self.weights)
        elif self.accuracy_level:
            raise ConfigError(f"accuracy_level is for precision 'int4' (MatMulNBits blocks); this config's "
                              f"precision is '{self.precision}'")
        if isinstance(self.keep_float, str):
            object.__setattr__(self, "keep_float", (self.keep_float,))
        object.__setattr__(self, "keep_float", tuple(self.keep_float))
        if self.op_types is not None:
            object.__setattr__(self, "op_types", tuple(self.op_types))
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


def check_int4_weights(scheme: Scheme) -> None:
    """The int4 preset's weight scheme: symmetric int4 in blocks (PerGroup) of a power of two >= 16."""
    g = scheme.granularity
    if scheme.dtype.name != "int4" or not scheme.symmetric:
        raise ConfigError(f"precision 'int4' stores symmetric int4 weights; got {scheme.dtype.name}"
                          f"{'' if scheme.symmetric else ' asymmetric'}")
    if not isinstance(g, PerGroup) or g.size < 16 or g.size & (g.size - 1):
        raise ConfigError(f"precision 'int4' needs weights in blocks: PerGroup(axis=0, size=N) with N a power of two "
                          f">= 16 (16, 32, 64, 128, ...; MatMulNBits' block sizes); got {g}")


def run_label(precision: str, weights_dtype: str | None = None) -> str:
    """The name a run is reported under: its precision, with the weight width where that is not the
    precision's own ('w4a8': 4-bit weights, 8-bit activations; never reported as 'int8').

    >>> run_label("int8", "int4")
    'w4a8'
    """
    if precision != "int8" or weights_dtype in (None, "int8", "uint8"):
        return precision
    return f"w{dtype_by_name(weights_dtype).bits}a8"

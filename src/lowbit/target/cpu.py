"""What the CPU's integer kernels can do exactly, read from the machine lowbit runs on.

On x86 CPUs with AVX2 but no VNNI, ONNX Runtime's u8 x s8 kernels multiply with VPMADDUBSW, which
adds pairs of u8*s8 products into int16 and saturates: 255*127*2 = 64770 > 32767. With weights on
a 7-bit grid ([-63, 63]) the worst pair is 255*63*2 = 32130 and the result is exact. Depthwise
convolutions use another kernel that does not saturate, so they keep the full 8-bit grid.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

from lowbit.errors import ConfigError, did_you_mean


@dataclass(frozen=True)
class CpuTraits:
    arch: str
    avx2: bool
    vnni: bool
    fp16: bool = False  # FP16 arithmetic that ONNX Runtime's CPU kernels use (ARM64 asimdhp)

    @property
    def u8s8_saturates(self) -> bool:
        """True where int8 weights x uint8 activations can overflow int16 pair sums."""
        return self.arch in ("x86_64", "AMD64", "i686") and self.avx2 and not self.vnni

    def describe(self) -> str:
        if self.u8s8_saturates:
            return f"{self.arch} AVX2 without VNNI: 7-bit weight grids for u8 x s8 kernels (exact, no saturation)"
        return f"{self.arch}{' VNNI' if self.vnni else ''}: full 8-bit weight grids"


@functools.lru_cache(maxsize=1)
def this_cpu() -> CpuTraits:
    arch = platform.machine()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):  # x86 / ARM spelling
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    fp16 = arch in ("aarch64", "arm64") and "asimdhp" in flags
    return CpuTraits(arch, "avx2" in flags, bool({"avx512_vnni", "avx_vnni"} & flags), fp16)


TARGETS = {
    "auto": None,  # this machine
    "avx2": CpuTraits("x86_64", True, False),
    "vnni": CpuTraits("x86_64", True, True),
    "arm64": CpuTraits("aarch64", False, False, fp16=True),
}


def target_traits(name: str) -> CpuTraits:
    if name not in TARGETS:
        raise ConfigError(f"unknown target '{name}'." + did_you_mean(name, TARGETS))
    return TARGETS[name] or this_cpu()

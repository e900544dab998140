"""The quantize command's config: --preset, --config FILE and the flags that override single fields
(--calibration, --algorithms, --target, --objective, --keep-float), resolved in that order."""

from __future__ import annotations

import argparse
from pathlib import Path

from lowbit.cli.config_file import algorithms_from, calibration_from, config_to_toml, load_config, recover_from
from lowbit.core.granularity import PerGroup
from lowbit.errors import ConfigError
from lowbit.presets import PRESETS, preset


def add_config_args(q: argparse.ArgumentParser) -> None:
    q.add_argument("--precision", "--preset", dest="precision", default=None, metavar="PRESET",
                   help=f"a preset: one of {', '.join(PRESETS)} (default int8; see lowbit list)")
    q.add_argument("--config", default=None, metavar="FILE.toml",
                   help="a TOML file mirroring lowbit.QuantConfig (schemes, calibration, algorithms, keep_float, "
                        "target, objective; metric and recover too); --print-config writes one to start from")
    q.add_argument("--calibration", default=None, metavar="NAME[:VALUE]",
                   help="how activation ranges are chosen: minmax, percentile:99.99, mse, entropy, moving_average "
                        "(NAME:key=value,... for several options)")
    q.add_argument("--algorithms", default=None, metavar="A,B,...",
                   help="the algorithms to run instead of the preset's, e.g. cle,gptq,bias-correction; "
                        "keep-if-better:gptq wraps one; 'none' runs none (options: --config)")
    q.add_argument("--block-size", type=int, default=None, metavar="N",
                   help="--preset int4: weights in blocks of N along K (a power of two >= 16; default 32)")
    q.add_argument("--accuracy-level", type=int, choices=range(5), default=None, metavar="0-4",
                   help="--preset int4: MatMulNBits' compute, 0 float (default) or 4 int8 (input quantized per "
                        "block at run time; on MiniLM here no faster: measure on your CPU)")
    q.add_argument("--recover", default=None, metavar="BUDGET",
                   help="after calibration, fine-tune the plan to match FP32 on the calibration data (no labels) "
                        "for a budget such as 10m or 500steps (lowbit.recover; needs torch)")
    q.add_argument("--print-config", action="store_true",
                   help="print the resolved config (preset, --config and the flags above) as TOML and exit")


def resolve_config(args):
    """(QuantConfig, preset name or None, {'metric': ..., 'recover': ...} from the config file and
    the flags). The preset name is kept where the flags changed nothing, so reports and errors name
    the preset the user chose."""
    name = args.precision
    extras = {"metric": None, "recover": None}
    if args.config:
        config, extras = load_config(args.config, preset(name) if name else None)
        name = _preset_of(args.config) or name
    else:
        name = name or "int8"
        config = preset(name)
    changes: dict = {}
    if args.calibration:
        changes["activations"] = config.activations.__class__(
            config.activations.dtype, config.activations.granularity, config.activations.symmetric,
            calibration_from(args.calibration))
    if args.algorithms is not None:
        changes["algorithms"] = algorithms_from(args.algorithms)
    if args.keep_float:
        changes["keep_float"] = tuple(args.keep_float)
    if args.objective:
        changes["objective"] = args.objective
    if args.target:
        changes["target"] = args.target
    if (args.block_size is not None or args.accuracy_level is not None) and config.precision != "int4":
        raise ConfigError(f"--block-size and --accuracy-level set MatMulNBits' blocks of precision 'int4' "
                          f"(--preset int4); this config's precision is '{config.precision}'.")
    if args.block_size is not None:
        w = config.weights
        changes["weights"] = w.__class__(w.dtype, PerGroup(0, args.block_size), w.symmetric, w.calibration)
    if args.accuracy_level is not None:
        changes["accuracy_level"] = args.accuracy_level
    if changes:
        config = config.with_(**changes)
    if name and config != preset(name):
        name = None
    if args.recover:
        extras["recover"] = recover_from(args.recover, "--recover")
    return config, name, extras


def _preset_of(path) -> str | None:
    import tomllib

    try:
        value = tomllib.loads(Path(path).read_text()).get("preset")
    except (OSError, ValueError):  # load_config has already named what is wrong with the file
        return None
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{path}: preset is a name such as \"int8\"; got {value!r}.")
    return value


def print_config(args) -> str:
    """The resolved config as TOML (what --print-config prints)."""
    config, name, extras = resolve_config(args)
    return config_to_toml(config, name, args.metric or extras["metric"], extras["recover"])

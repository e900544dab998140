"""`lowbit demo`: the built-in default, real MobileNetV2 on real photos."""

from lowbit.demo.mobilenet import run_demo

__all__ = ["run_demo"]

"""Real data sets that install offline (see /work/shared/DATA.md)."""

from lowbit.demo.datasets import fashion_mnist

__all__ = ["fashion_mnist"]

"""Real data sets that install offline (see /work/shared/DATA.md)."""

from lowbit.datasets import fashion_mnist

__all__ = ["fashion_mnist"]

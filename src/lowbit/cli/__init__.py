"""The `lowbit` command (console script `lowbit.cli:main`)."""

from lowbit.cli.commands import main

__all__ = ["main"]

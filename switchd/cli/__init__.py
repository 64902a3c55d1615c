"""The `switchd` command line: one module per command group."""

from switchd.cli.main import main

__all__ = ["main"]

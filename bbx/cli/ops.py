"""Operator commands — (to be written)."""

import typer


def register(app: typer.Typer) -> None:
    """Add the operator commands to the top-level app."""

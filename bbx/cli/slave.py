"""bbx slave — (to be written)."""

import typer

app = typer.Typer(help="Create, start and stop a slave.", no_args_is_help=True, pretty_exceptions_enable=False)

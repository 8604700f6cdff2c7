"""The `bbx` console script, with the cyclic garbage collector off while the process starts.

Importing typer and Twisted allocates a few hundred thousand objects that live as long as the
process (modules, classes, functions, zope.interface declarations). With the collector on,
those allocations set off collections that walk them again and again while they pile up, and
at exit one last collection walks them all once more. Together that was about a fifth of a
`bbx ping` (bench/cli.py). None of those objects is garbage, so walking them finds nothing.

So the console script turns the collector off before its first import, and the process turns
it back on with `resume()` once it has imported what it runs with and is about to do its
work (just before its reactor runs). A short command that never resumes runs with it off,
which costs nothing it would have freed: it ends within moments. At exit, `main` moves every
object to the permanent generation so that finalisation does not walk them.

Only the console script pauses: tests and other code that import bbx keep the collector as
they have it, and `resume()` is then a no-op.
"""

import gc

_paused = False


def pause() -> None:
    """Turn the cyclic collector off until `resume()`."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def resume(*, freeze: bool = True) -> None:
    """Turn the collector back on, if `pause()` turned it off.

    With `freeze`, what exists now (the imports, mostly) moves to the permanent generation and
    is never walked again, at the price that any of it that later becomes cyclic garbage is
    never freed. Daemons, whose first configuration a reload replaces, pass freeze=False and
    pay one walk of their start-up objects instead.
    """
    global _paused
    if not _paused:
        return
    _paused = False
    if freeze:
        gc.freeze()
    gc.enable()


def main() -> None:
    """Console-script entry point: bbx.cli.main with the collector paused while it starts."""
    pause()
    try:
        from bbx.cli import main as cli_main

        cli_main()
    finally:
        # The process is ending: finalisation would walk every object once more, for nothing.
        gc.freeze()

"""Typer's option coercion without pydantic, for the plain types bbx's commands use.

Typer ≥ 0.2x coerces every parameter of the invoked command through a pydantic TypeAdapter:
importing pydantic and building the adapters cost ~50 ms of a 0.25 s `bbx ping` (measured
with bench/cli.py --importtime). bbx's parameters are all str, int, float, bool, Path or
list[str], which need no schema machinery, so `install()` gives those a small coercer and
leaves every other annotation to typer. On a typer without that hook it does nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_TRUE = {"1", "true", "t", "yes", "y", "on"}
_FALSE = {"0", "false", "f", "no", "n", "off", ""}


def _number(kind: type, value: Any, info, param, ctx, bad) -> Any:
    try:
        number = kind(value)
    except (TypeError, ValueError):
        label = "integer" if kind is int else "number"
        raise bad(f"{value!r} is not a valid {label}.", ctx=ctx, param=param) from None
    low, high = info.min, info.max
    if getattr(info, "clamp", False):
        if low is not None and number < low:
            return kind(low)
        if high is not None and number > high:
            return kind(high)
        return number
    if (low is not None and number < low) or (high is not None and number > high):
        if low is None:
            where = f"x<={high}"
        elif high is None:
            where = f"x>={low}"
        else:
            where = f"{low}<=x<={high}"
        raise bad(f"{number} is not in the range {where}.", ctx=ctx, param=param)
    return number


def _leaf(annotation, info, value, param, ctx, bad, coerce_path):
    if annotation is str:
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise bad(f"{value!r} is not a valid boolean.", ctx=ctx, param=param)
    if annotation in (int, float):
        return _number(annotation, value, info, param, ctx, bad)
    # Path: typer's own checks (exists, file_okay, dir_okay...), handed a Path so that it
    # does not reach for pydantic to make one.
    return coerce_path(Path(value), info, path_type=Path, param=param, ctx=ctx)


def _simple(annotation) -> tuple[bool, Any] | None:
    """(is_list, leaf type) for the annotations handled here, else None."""
    from typing import get_args, get_origin

    if annotation in (str, bool, int, float, Path):
        return False, annotation
    if get_origin(annotation) is list:
        args = get_args(annotation)
        if len(args) == 1 and args[0] in (str, int, float, Path):
            return True, args[0]
    return None


def install() -> bool:
    """Route typer's coercion of plain types through this module; False when typer has no hook."""
    try:
        from typer import core
        from typer._coercion import RuntimeParam
        from typer._param_types import coerce_cli_path
        from typer import BadParameter
    except ImportError:
        return False
    parameter = getattr(core, "_TyperParameter", None)
    original = getattr(parameter, "get_runtime_param", None)
    if original is None or getattr(original, "_bbx", False):
        return original is not None

    class PlainParam(RuntimeParam):
        """Coerces str, bool, int, float, Path and lists of them as typer would."""

        def _coerce_value(self, value, param, ctx):
            is_list, leaf = _simple(self.annotation)
            info = self.parameter_info
            if is_list:
                items = value if isinstance(value, (list, tuple)) else [value]
                return [_leaf(leaf, info, item, param, ctx, BadParameter, coerce_cli_path)
                        for item in items]
            return _leaf(leaf, info, value, param, ctx, BadParameter, coerce_cli_path)

    def get_runtime_param(self):
        if self._runtime_param is None:
            descriptor = self.type_descriptor
            info = descriptor.parameter_info
            if (descriptor.file_annotation is None and getattr(info, "parser", None) is None
                    and _simple(descriptor.annotation) is not None):
                self._runtime_param = PlainParam(parameter_info=info,
                                                 annotation=descriptor.annotation)
            else:
                return original(self)
        return self._runtime_param

    get_runtime_param._bbx = True
    parameter.get_runtime_param = get_runtime_param
    return True

"""click options made from the settings dataclasses (tm.settings), and settings made from them.

`options(SettingsClass, "field", ...)` decorates a command with one option per field, in
that order: the flag, help, default, environment variable (shown by --help, like the
default), and the click type (a range, choices, an address check) all come from the
field's `Option` metadata. The option's parameter is named like the field, so
`build(SettingsClass, params)` turns a command's parameters into settings; the rules that
span fields are the settings' own (`__post_init__`), and their SettingsError becomes a
usage error (exit 2) here.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, fields
from functools import cache
from typing import Any, TypeVar

import click

from tm.core.addresses import split_address
from tm.settings import Option, SettingsError, option_of

F = Callable[..., Any]
S = TypeVar("S")


def _check_address(_ctx: click.Context, param: click.Parameter, value: str | None
                   ) -> str | None:
    if value is None:
        return None
    try:
        split_address(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from None
    return value


def _click_type(option: Option, kind: Any) -> Any:
    if option.choices:
        return click.Choice(option.choices)
    if kind is int and (option.min is not None or option.max is not None):
        return click.IntRange(None if option.min is None else int(option.min),
                              None if option.max is None else int(option.max))
    if kind is float and (option.min is not None or option.max is not None):
        return click.FloatRange(option.min, option.max, min_open=option.min_open)
    return kind


def click_option(option: Option, name: str, default: Any, kind: Any = str,
                 **overrides: Any) -> Callable[[F], F]:
    """The click option for `option`, its parameter called `name`, of python type `kind`
    (or a click type); `overrides` go to click.option as they are (for a command where an
    option means something else)."""
    envvars = [option.envvar, *option.more_envvars]
    settings: dict[str, Any] = {
        "envvar": envvars[0] if len(envvars) == 1 else envvars,
        "show_envvar": True,
        "default": default,
        "show_default": option.default_text or True,
        "type": _click_type(option, kind),
        "help": option.help,
    }
    if option.address:
        settings["callback"] = _check_address
    settings.update(overrides)
    return click.option(option.flag, *option.aliases, name, **settings)


@cache
def _field_kinds(cls: type) -> dict[str, tuple[type, Any]]:
    """Each field's type without `| None`, and its default."""
    hints = typing.get_type_hints(cls)
    kinds: dict[str, tuple[type, Any]] = {}
    for f in fields(cls):
        hint = hints[f.name]
        if isinstance(hint, types.UnionType):
            hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
        kinds[f.name] = (hint, None if f.default is MISSING else f.default)
    return kinds


def option(cls: type, name: str, **overrides: Any) -> Callable[[F], F]:
    """The option of field `name` of `cls` (see `click_option` for `overrides`)."""
    kind, default = _field_kinds(cls)[name]
    default = overrides.pop("default", default)
    return click_option(option_of(cls, name), name, default, kind, **overrides)


def options(cls: type, *names: str) -> Callable[[F], F]:
    """The options of these fields of `cls`, shown by --help in this order."""

    def decorate(fn: F) -> F:
        for name in reversed(names):
            fn = option(cls, name)(fn)
        return fn

    return decorate


def build(cls: type[S], params: Mapping[str, Any], **values: Any) -> S:
    """`cls(**values, **those params that are fields of cls)`; a SettingsError is a usage
    error."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    given = {k: v for k, v in params.items() if k in names}
    try:
        return cls(**{**given, **values})
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None

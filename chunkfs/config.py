"""Typed configuration for each daemon: defaults, a TOML file, then command-line flags.

Each daemon declares one dataclass. `daemon_command` turns its fields into `--flag` options
(`data_dir` -> `--data-dir`), reads `--config FILE` (TOML, same names), applies the flags on top
and validates every value, stopping the daemon with a one-line message naming the bad option.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import tomllib
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from chunkfs import request_id, service
from chunkfs.log_lines import OneLinePerRecord

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")  # a config: a dataclass whose fields are made by `opt`


class ConfigError(ValueError):
    pass


def parse_address(value: str, default_port: int | None = None) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep:
        if default_port is None:
            raise ConfigError(f"{value!r} is not HOST:PORT")
        return value, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{value!r}: port must be 1-65535")
    return host.strip("[]") or "127.0.0.1", int(port)


def parse_addresses(value: str, default_port: int | None = None) -> list[tuple[str, int]]:
    """`HOST:PORT[,HOST:PORT...]`: the metaservers of a cluster with failover, or its one."""
    items = [item.strip() for item in value.split(",") if item.strip()]
    if not items:
        raise ConfigError(f"{value!r} names no HOST:PORT")
    return [parse_address(item, default_port) for item in items]


def _coerce(name: str, kind: Any, value: Any) -> Any:
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(value)
                return value.lower() in ("1", "true", "yes", "on")
            return bool(value)
        if kind is Path:
            return Path(value).expanduser()
        if kind in (int, float, str):
            return kind(value)
        if typing.get_origin(kind) is list:
            items = value.split(",") if isinstance(value, str) else list(value)
            (inner,) = typing.get_args(kind)
            return [_coerce(name, inner, v) for v in items if v != ""]
    except (TypeError, ValueError):
        raise ConfigError(f"option {name}: {value!r} is not a valid {getattr(kind, '__name__', kind)}") from None
    raise ConfigError(f"option {name}: unsupported type {kind}")


def load(cls: type[T], file: Path | None, overrides: dict[str, Any]) -> T:
    values: dict[str, Any] = {}
    if file is not None:
        try:
            values.update(tomllib.loads(Path(file).read_text()))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {file}: {exc}") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]} (known: {', '.join(sorted(fields))})")
    config = cls(**{k: _coerce(k, hints[k], v) for k, v in values.items()})
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
    return config


def setup_logging(level: str) -> None:
    """Log to stderr; under systemd, whose journal stamps each line itself, without the time.
    Lines are `<level> <logger>: <message>` then ` request_id=<id>` when written for a request;
    one record is one line (tracebacks indented under it), whatever a request carried."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(OneLinePerRecord())
    handler.addFilter(request_id.LogFilter())  # lines logged while serving a request name its id
    if service.logging_to_journal():
        handler.setFormatter(service.JournalFormatter("%(levelname)s %(name)s: %(message)s%(request_tag)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s%(request_tag)s"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def daemon_command(cls: type[T], help_text: str, positional: tuple[str, ...] = ()
                   ) -> Callable[[Callable[[T], None]], click.Command]:
    """Make a click command whose options are `cls`'s fields (those named in `positional` are
    arguments instead); it calls `run(config)`."""

    def decorate(run: Callable[[T], None]) -> click.Command:
        def callback(config_file: Path | None, **flags: Any) -> None:
            try:
                config = load(cls, config_file, flags)
            except ConfigError as exc:
                click.echo(f"{click.get_current_context().info_name}: {exc}", err=True)
                sys.exit(2)
            run(config)

        params: list[click.Parameter] = [
            click.Option(["--config", "config_file"], type=click.Path(path_type=Path),
                         help="TOML file with these options (flags override it)."),
        ]
        for name in positional:
            params.append(click.Argument([name], required=False, default=None))
        for field in dataclasses.fields(cls):
            if field.name in positional:
                continue
            default = field_default(field)
            params.append(click.Option(
                ["--" + field.name.replace("_", "-"), field.name], default=None,
                help=f"{field.metadata.get('help', '')} [default: {default}]".strip(),
            ))
        return click.Command(run.__name__, callback=callback, params=params, help=help_text)

    return decorate


def example(cls: type, header: str) -> str:
    """A TOML file documenting every option of `cls`: its help, then the option commented out
    at its default, so the file as written changes nothing and each line can be uncommented."""
    lines = [f"# {line}" if line else "#" for line in header.strip().splitlines()]
    for field in dataclasses.fields(cls):
        default = field_default(field)
        lines += ["", f"# {field.metadata.get('help', '')}", f"#{field.name} = {_toml_value(default)}"]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Path) and not value.parts:
        return '""'  # no default: Path("") would print as "."
    return json.dumps(str(value))


def field_default(field: dataclasses.Field[Any]) -> Any:
    """The value a config field has when nothing sets it (`opt` gives every field one)."""
    if callable(field.default_factory):
        return field.default_factory()
    return field.default


def opt(default: Any, help: str) -> Any:
    """A dataclass field with its documentation."""
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})

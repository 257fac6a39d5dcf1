"""`mount.chunkfs SPEC DIR [-o OPTIONS]`: what mount(8) and fstab call for `-t chunkfs`.

Starts the `chunkfs-mount` daemon in the background and returns once the mount answers (or
fails with its log), so `mount -t chunkfs 127.0.0.1:9520 /mnt/x -o secret=/etc/chunkfs/secret`
and an fstab line with `_netdev` work; `umount /mnt/x` ends that daemon.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from chunkfs import mounts
from chunkfs.config import field_default
from chunkfs.daemons import DaemonError, module_command, spawn, wait_for
from chunkfs.mount.main import MountConfig

# options mount(8) and fstab pass that concern mount(8), not chunkfs
IGNORED = {"defaults", "_netdev", "auto", "noauto", "nofail", "rw", "user", "users", "nouser", "owner",
           "exec", "noexec", "suid", "nosuid", "dev", "nodev", "async", "atime", "noatime", "relatime"}
ALIASES = {"secret": "secret_file", "ro": "read_only"}
FIELDS = {f.name for f in dataclasses.fields(MountConfig)} - {"metaserver", "mountpoint"}


class OptionError(ValueError):
    pass


def option_rows() -> list[tuple[list[str], str, str]]:
    """(names, default, help) of every `-o` option, from MountConfig."""
    rows = []
    for field in dataclasses.fields(MountConfig):
        if field.name in FIELDS:
            default = field_default(field)
            default = "" if default == Path("") else str(default).lower() if isinstance(default, bool) else default
            names = [field.name, *(alias for alias, name in ALIASES.items() if name == field.name)]
            rows.append((names, str(default), field.metadata.get("help", "")))
    return rows


def options_help() -> str:
    """The options for `chunkfs mount --help`."""
    return "\n".join(f"{', '.join(names)}: {help} [default: {default}]" for names, default, help in option_rows())


def options_markdown() -> str:
    """The options as the README's table (a test keeps the README equal to it)."""
    lines = ["| option | default | what it does |", "|---|---|---|"]
    for names, default, help in option_rows():
        help = help.replace("<", "&lt;").replace(">", "&gt;")
        lines.append(f"| {', '.join(f'`{n}`' for n in names)} | {f'`{default}`' if default else ''} | {help} |")
    return "\n".join(lines)


def parse_options(option_string: str) -> dict[str, str]:
    """`-o` options as `chunkfs-mount` flags' values, keyed by config field name."""
    out: dict[str, str] = {}
    for item in filter(None, option_string.split(",")):
        key, sep, value = item.partition("=")
        key = ALIASES.get(key.replace("-", "_"), key.replace("-", "_"))
        if key in IGNORED or key.startswith(("x_", "x-")) or key == "comment":
            continue
        if key not in FIELDS:
            raise OptionError(f"unknown mount option {item.partition('=')[0]!r} "
                              f"(chunkfs knows: {', '.join(sorted(FIELDS | set(ALIASES)))})")
        out[key] = value if sep else "true"
    return out


def default_log_path(mountpoint: Path) -> Path:
    name = str(mountpoint).strip("/").replace("/", "-") or "root"
    base = Path("/var/log/chunkfs") if os.geteuid() == 0 else mounts.runtime_dir() / "logs"
    return base / f"mount-{name}.log"


def launch(spec: str, mountpoint: Path, options: dict[str, str], log_path: Path | None = None,
           pid_path: Path | None = None, timeout_s: float = 30.0, command_prefix: Sequence[str] = ()) -> int:
    """Start the mount daemon for `spec` on `mountpoint`; return its pid once mounted.
    `command_prefix` runs it through another program that execs it (e.g. `nsenter --net=...`)."""
    mountpoint = mountpoint.absolute()
    if mounts.is_mounted(mountpoint):
        raise DaemonError(f"{mountpoint} is already a chunkfs mount")
    args = [spec, str(mountpoint)]
    for key, value in options.items():
        args += ["--" + key.replace("_", "-"), value]
    log_path = log_path or default_log_path(mountpoint)
    proc = spawn([*command_prefix, *module_command("chunkfs.mount.main", *args)], log_path, pid_path)
    wait_for(f"mount of {spec} on {mountpoint}", lambda: mounts.is_mounted(mountpoint), timeout_s, proc, log_path)
    return proc.pid


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    options = ""
    positional = []
    while argv:
        arg = argv.pop(0)
        if arg == "-o" and argv:
            options = ",".join(filter(None, [options, argv.pop(0)]))
        elif arg.startswith("-o") and len(arg) > 2:
            options = ",".join(filter(None, [options, arg[2:]]))
        elif arg in ("-s", "-f", "-n", "-v", "-r", "-w"):
            continue  # sloppy, fake, no-mtab, verbose: nothing to do for chunkfs
        elif arg.startswith("-t"):
            if arg == "-t" and argv:
                argv.pop(0)
        else:
            positional.append(arg)
    if len(positional) != 2:
        print("usage: mount.chunkfs HOST:PORT DIR [-o secret=FILE,...]", file=sys.stderr)
        sys.exit(1)
    try:
        launch(positional[0], Path(positional[1]), parse_options(options))
    except (OptionError, DaemonError) as exc:
        print(f"mount.chunkfs: {exc}", file=sys.stderr)
        sys.exit(32)  # mount(8)'s "mount failure"


if __name__ == "__main__":
    main()

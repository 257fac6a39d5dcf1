"""`chunkfs mount` (a client of a remote cluster) and `chunkfs install` (the mount(8) helper and,
with --units, the systemd units: see `deploy`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from chunkfs.cli import deploy
from chunkfs.cli.cluster_access import fail
from chunkfs.daemons import DaemonError
from chunkfs.mount.helper import OptionError, launch, options_help, parse_options

HELPER_PATH = Path("/sbin/mount.chunkfs")


@click.command(epilog="\b\nMount options (-o NAME=VALUE,..., also in fstab):\n" + options_help())
@click.argument("metaserver")
@click.argument("mountpoint", type=click.Path(file_okay=False, path_type=Path))
@click.option("--secret-file", type=click.Path(exists=True, path_type=Path), default=None,
              help="Cluster secret file [default: /etc/chunkfs/secret].")
@click.option("-o", "options", default="", help="Mount options, as for mount -o (listed below).")
def mount(metaserver: str, mountpoint: Path, secret_file: Path | None, options: str) -> None:
    """Mount the cluster whose metaserver is METASERVER (HOST:PORT, or HOST:PORT:/SUBDIR to show only
    that directory) at MOUNTPOINT, in the background."""
    try:
        parsed = parse_options(options)
        if secret_file is not None:
            parsed["secret_file"] = str(secret_file.absolute())
        mountpoint.mkdir(parents=True, exist_ok=True)
        pid = launch(metaserver, mountpoint, parsed)
    except (OptionError, DaemonError) as exc:
        fail(str(exc))
    click.echo(f"mounted {metaserver} on {mountpoint.absolute()} (pid {pid}); unmount with fusermount3 -u {mountpoint}")


@click.command()
@click.option("--helper", type=click.Path(path_type=Path), default=HELPER_PATH, show_default=True,
              help="Where to put the mount(8) helper.")
@click.option("--units", is_flag=True,
              help="Also install the systemd units, /usr/local/bin links and example configs in /etc/chunkfs.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path("/"), show_default=True,
              help="Install into this directory as if it were / (for images and packages).")
def install(helper: Path, units: bool, root: Path) -> None:
    """Install the `mount.chunkfs` helper so `mount -t chunkfs` and fstab work, and with --units
    what systemd needs to run the daemons (needs root)."""
    helper = root.absolute() / helper.absolute().relative_to("/")
    script = f"#!/bin/sh\n# installed by chunkfs install\nexec {sys.executable} -m chunkfs.mount.helper \"$@\"\n"
    try:
        helper.parent.mkdir(parents=True, exist_ok=True)
        tmp = helper.with_name(helper.name + ".tmp")
        tmp.write_text(script)
        os.chmod(tmp, 0o755)
        os.replace(tmp, helper)
    except OSError as exc:
        fail(f"cannot write {helper}: {exc.strerror} (run as root)")
    click.echo(f"installed {helper}: mount -t chunkfs HOST:PORT DIR -o secret=FILE now works")
    if units:
        try:
            for line in deploy.install_units(root.absolute()):
                click.echo(line)
        except (OSError, deploy.DeployError) as exc:
            fail(f"cannot install the units: {exc}")

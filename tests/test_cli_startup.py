"""The CLI's start: every command is found under its name, and a file command loads no code of
the daemons (their imports cost most of a start-up; see `chunkfs.cli`)."""

import subprocess
import sys

import click

from chunkfs.cli import COMMANDS, cli

HEAVY = ("aiohttp", "httpx", "rich", "pyfuse3", "chunkfs.metaserver", "chunkfs.chunkserver", "chunkfs.mount")


def test_every_command_is_found_under_its_name():
    ctx = click.Context(cli)
    assert cli.list_commands(ctx) == sorted(COMMANDS)
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        assert command is not None and command.name == name
    assert cli.get_command(ctx, "no-such-command") is None


def test_a_file_command_loads_no_daemon_code():
    code = ("import sys, click; from chunkfs.cli import cli; "
            "[cli.get_command(click.Context(cli), c) for c in ('put', 'get', 'ls')]; import chunkfs.client; "
            "print(' '.join(sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    assert [m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY)] == []

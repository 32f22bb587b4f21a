"""`pid-trt` command line: a thin click layer over the package's Python API.

Every expected failure is a `PiDError`; it is printed as one line on stderr and the process exits 2.
"""
from __future__ import annotations

import sys
import warnings

import click

from pid_trt.errors import PiDError


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PiDError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pid-trt")
def cli() -> None:
    """pid-trt: export, build and run NVIDIA's PiD pixel diffusion decoder."""


def _register() -> None:
    # Each command lives in its own module; importing them here keeps `pid_trt.cli` the one entry point.
    from pid_trt.cli import (bench_cmd, build_cmd, decode_cmd, demo_cmd, embed, engines_cmd, export_cmd,
                             generate_cmd, inspect_cmd, parity_cmd, reconstruct_cmd, serve_cmd)

    for mod in (demo_cmd, export_cmd, build_cmd, engines_cmd, decode_cmd, generate_cmd, reconstruct_cmd, parity_cmd,
                bench_cmd, serve_cmd, embed, inspect_cmd):
        if mod.command.name not in cli.commands:
            cli.add_command(mod.command)


def _warn(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"warning: {message}", err=True)


def main() -> None:
    warnings.showwarning = _warn  # one line per warning, no source location
    _register()
    cli(prog_name="pid-trt")

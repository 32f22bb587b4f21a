"""`pid-trt` command line: a thin click layer over the package's Python API, one module per command.

Exit status: 0 ok, 1 a parity/check failed, 2 bad input or a missing tool (one `error: …` line on stderr),
3 an unexpected internal error (rerun with -v for the traceback), 130 interrupted.
"""
from __future__ import annotations

import sys
import traceback
import warnings
from typing import Any

import click

from pid_trt.cli.options import VERBOSITY, configure_logging
from pid_trt.errors import PiDError

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _error(message: str) -> None:
    click.echo(f"error: {' '.join(message.split())}", err=True)


def _warn(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"warning: {' '.join(str(message).split())}", err=True)


class _Group(click.Group):
    """Runs a command under the error contract: expected failures and usage errors are one `error:` line."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        configure_logging(0)
        saved, warnings.showwarning = warnings.showwarning, _warn
        try:
            code = super().main(args, prog_name or "pid-trt", complete_var, standalone_mode=False, **extra)
        except PiDError as e:
            _error(str(e))
            code = EXIT_BAD_INPUT
        except click.exceptions.NoArgsIsHelpError as e:  # plain `pid-trt`: the help, not an error
            click.echo(e.ctx.get_help())
            code = EXIT_OK
        except click.ClickException as e:
            _error(f"{e.format_message()} (see: pid-trt {_command_name(args)}--help)")
            code = EXIT_BAD_INPUT
        except (click.Abort, KeyboardInterrupt):
            _error("interrupted")
            code = EXIT_INTERRUPTED
        except Exception as e:  # noqa: BLE001 -- the last line of defence: report, never a bare traceback
            if VERBOSITY["level"] > 0:
                traceback.print_exc()
            _error(f"internal error: {type(e).__name__}: {e} (a bug in pid-trt; rerun with -v for the traceback "
                   "and report it)")
            code = EXIT_INTERNAL
        finally:
            warnings.showwarning = saved
        sys.exit(code if isinstance(code, int) else EXIT_OK)


def _command_name(args: Any) -> str:
    argv = sys.argv[1:] if args is None else list(args)
    name = next((a for a in argv if not a.startswith("-")), None)
    return f"{name} " if name in cli.commands else ""


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pid-trt")
def cli() -> None:
    """pid-trt: export, build and run NVIDIA's PiD pixel diffusion decoder."""


def _register() -> None:
    # Command modules import only click, pid_trt.cli.options and light pid_trt modules: `--help` stays fast.
    from pid_trt.cli import (
        bench_cmd,
        build_cmd,
        decode_cmd,
        demo_cmd,
        embed_cmd,
        engines_cmd,
        export_cmd,
        fp8_sweep_cmd,
        generate_cmd,
        inspect_cmd,
        parity_cmd,
        reconstruct_cmd,
        serve_cmd,
    )

    for mod in (demo_cmd, export_cmd, build_cmd, engines_cmd, decode_cmd, generate_cmd, reconstruct_cmd, parity_cmd,
                bench_cmd, fp8_sweep_cmd, serve_cmd, embed_cmd, inspect_cmd):
        if mod.command.name not in cli.commands:
            cli.add_command(mod.command)


_register()


def main() -> None:
    cli()

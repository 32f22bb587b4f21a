"""What every command shares: one spelling per concept (options and their parsing), the command class with
-v/-q, logging to stderr, and JSON output. Command modules import this module only, never each other.

The vocabulary and the exit-status contract are documented in the README's "CLI" section."""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import pathlib
import sys
from collections.abc import Callable
from typing import Any

import click

from pid_trt.config import BACKENDS, EXPORT_PRECISIONS, TINY_STRUCTURE, TORCH_PRECISIONS, parse_size
from pid_trt.errors import ConfigError

PATH = click.Path(path_type=pathlib.Path)
FILE = click.Path(dir_okay=False, path_type=pathlib.Path)
DIR = click.Path(file_okay=False, path_type=pathlib.Path)


# -- logging and verbosity -----------------------------------------------------------------------------------

class _Prefixed(logging.Formatter):
    """`warning: …` / `note: …` / `debug: …`: every stderr line but the final error says what it is."""

    def format(self, record: logging.LogRecord) -> str:
        kind = "warning" if record.levelno >= logging.WARNING else "note" if record.levelno >= logging.INFO else "debug"
        return f"{kind}: {record.getMessage()}"


VERBOSITY = {"level": 0}  # -1 quiet, 0 default, 1+ verbose; read by the error handler


def configure_logging(verbosity: int = 0) -> None:
    """pid_trt's loggers print notes (default), only warnings (-q) or debug lines (-v); other libraries' loggers
    print only their errors unless -v."""
    VERBOSITY["level"] = verbosity
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "_pid_trt", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Prefixed())
        handler._pid_trt = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    handler.stream = sys.stderr  # this invocation's stderr (test runners swap it); no flush of an old one
    root.setLevel(logging.INFO if verbosity > 0 else logging.ERROR)
    level = logging.DEBUG if verbosity > 0 else logging.WARNING if verbosity < 0 else logging.INFO
    logging.getLogger("pid_trt").setLevel(level)
    # diffusers and transformers print through handlers of their own, set up from these variables when they are
    # first imported: their chatter must not come before (or instead of) our one error line
    for variable in ("DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY"):
        if os.environ.get(variable) in (None, "error", "info"):
            os.environ[variable] = "info" if verbosity > 0 else "error"


def _set_verbosity(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if not value or ctx.resilient_parsing:
        return
    configure_logging(-1 if param.name == "quiet" else value)


class Command(click.Command):
    """A pid-trt command: every one takes -v/--verbose and -q/--quiet."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params += [
            click.Option(["-v", "--verbose"], count=True, expose_value=False, is_eager=True, callback=_set_verbosity,
                         help="More output: debug notes, other libraries' logs, tracebacks of internal errors."),
            click.Option(["-q", "--quiet"], is_flag=True, expose_value=False, is_eager=True,
                         callback=_set_verbosity, help="Only warnings and errors on stderr."),
        ]


command = functools.partial(click.command, cls=Command)


def note(message: str) -> None:
    """A progress or status line for the user, on stderr (`note: …`)."""
    logging.getLogger("pid_trt.cli").info(message)


# -- sizes ---------------------------------------------------------------------------------------------------

class SizeType(click.ParamType):
    """An output size, width first: `WxH` (also `W×H`, `W,H`), or `N` for N×N."""

    name = "WxH"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        try:
            return parse_size(value)
        except ConfigError as e:
            self.fail(str(e), param, ctx)


SIZE = SizeType()


def size_option(*aliases: str, multiple: bool = False, default: str | None = None, help: str) -> Callable:
    """`--size WxH` (repeatable where several sizes make sense); `aliases` keep older spellings working."""
    return click.option("--size", *aliases, "sizes" if multiple else "size", type=SIZE, multiple=multiple,
                        default=default, show_default=default is not None, metavar="WxH", help=help)


def _writable(directory: bool) -> Callable:
    """A click callback refusing, before any work, an output location that cannot be written."""
    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None and value != "-" and not ctx.resilient_parsing:
            from pid_trt.atomic import check_writable

            check_writable(value, param.opts[0], directory=directory)
        return value
    return check


def out_option(default: pathlib.Path | None = None, help: str = "Output directory.", file: bool = False,
               aliases: tuple[str, ...] = ()) -> Callable:
    """`--out PATH` (alias `-o`), where a command writes its results; checked to be writable before any work."""
    return click.option("--out", "-o", *aliases, "out", type=FILE if file else PATH, default=default,
                        show_default=default is not None, help=help, callback=_writable(directory=not file))


# -- machine-readable output ---------------------------------------------------------------------------------

def json_option(help: str = "Machine-readable output: JSON on stdout, or written to FILE.",
                aliases: tuple[str, ...] = ()) -> Callable:
    """`--json` prints JSON to stdout; `--json FILE` writes it to FILE instead."""
    return click.option("--json", *aliases, "json_out", is_flag=False, flag_value="-", default=None,
                        metavar="[FILE]", help=help, callback=_writable(directory=False))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)  # JSON has no literal for inf/nan
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, pathlib.Path):
        return str(obj)
    return obj


def result(message: str, json_out: str | None = None) -> None:
    """The command's human-readable result: on stdout, unless stdout carries JSON (then as a note on stderr)."""
    if json_out == "-":
        note(message)
    else:
        click.echo(message)


def emit_json(obj: Any, target: str | None) -> None:
    """Print `obj` as JSON (target "-") or write it atomically to the file `target` (None: nothing)."""
    if target is None:
        return
    obj = _jsonable(obj)
    if target == "-":
        click.echo(json.dumps(obj, indent=1))
        return
    from pid_trt.atomic import atomic_write_json

    atomic_write_json(target, obj)
    note(f"wrote {target}")


# -- where the decoder comes from ----------------------------------------------------------------------------

def _options(options: list[Callable]) -> Callable[[Callable], Callable]:
    return lambda fn: functools.reduce(lambda f, option: option(f), reversed(options), fn)


def net_options(fn: Callable) -> Callable:
    """--backbone and --ckpt."""
    return _options([
        click.option("--backbone", help="LDM/RAE backbone: flux, flux2, flux2-klein-4b, zimage, sd3, sdxl, qwenimage, "
                                        "dinov2, siglip, … (read from the export or engines when omitted)."),
        click.option("--ckpt", help="Checkpoint type: 2k, 2kto4k, 2kto4k_v1pt5, 2kto4k_v1pt5_teacher [default 2k, or "
                                    "what the export or engines hold]."),
    ])(fn)


def net_config_option(help: str) -> Callable:
    """`--net-config FILE`: a flat JSON dict of upstream PidNet kwargs (custom nets)."""
    return click.option("--net-config", type=click.Path(exists=True, dir_okay=False, path_type=pathlib.Path),
                        help=help)


def export_net_options(fn: Callable) -> Callable:
    """The net an export (or the FP8 sweep) is made from: --backbone/--ckpt or --net-config, and --checkpoint."""
    return _options([
        net_options,
        net_config_option("Flat JSON dict of upstream PidNet kwargs (custom nets; replaces --backbone/--ckpt)."),
        click.option("--checkpoint", type=FILE,
                     help="model_ema_bf16.pth or .safetensors; without it, random weights of the official shape."),
    ])(fn)


def decoder_options(fn: Callable) -> Callable:
    """The decoder `decode`, `generate` and `reconstruct` run: its source, backend and device."""
    return _options([
        net_options,
        click.option("--engine-dir", type=DIR, help="TensorRT engines (pid-trt build)."),
        click.option("--onnx-dir", type=DIR, help="ONNX export (pid-trt export)."),
        click.option("--checkpoint", type=FILE,
                     help="model_ema_bf16.pth or .safetensors (torch backend); with --engine-dir/--onnx-dir, the "
                          "weights they must have been made from (others are refused)."),
        click.option("--tiny", is_flag=True, hidden=True, help="A tiny seeded random PiD net (tests, dry runs)."),
        click.option("--backend", type=click.Choice(BACKENDS), default=None,
                     help="Backend [default: what the source implies]."),
        click.option("--device", default=None, help="cpu, cuda, cuda:1 … [default: cuda when available]."),
        click.option("--precision", type=click.Choice(TORCH_PRECISIONS), default="fp32", show_default=True,
                     help="torch backend: bf16 mirrors upstream's autocast."),
        click.option("--no-cuda-graph", is_flag=True, help="Run eagerly instead of replaying CUDA graphs."),
    ])(fn)


def source_from(opts: dict[str, Any]) -> dict[str, Any]:
    """The source part of `decoder_options` (for workflows.sources.describe_source and the preflights)."""
    return {k: opts[k] for k in ("engine_dir", "onnx_dir", "checkpoint", "tiny", "backbone", "ckpt", "device",
                                 "precision")}


def open_decoder_from(opts: dict[str, Any]):
    """The decoder `decoder_options` describe (pops those options from `opts`)."""
    from pid_trt.workflows.sources import open_decoder

    return open_decoder(engine_dir=opts.pop("engine_dir"), onnx_dir=opts.pop("onnx_dir"),
                        checkpoint=opts.pop("checkpoint"), tiny=opts.pop("tiny"), backbone=opts.pop("backbone"),
                        ckpt=opts.pop("ckpt"), backend=opts.pop("backend"), device=opts.pop("device"),
                        precision=opts.pop("precision"), cuda_graph=not opts.pop("no_cuda_graph"))


def sampler_options(fn: Callable) -> Callable:
    """--steps, and the teachers' --cfg, --shift and --negative-embedding."""
    return _options([
        click.option("--steps", type=click.IntRange(min=1), default=None,
                     help="Sampler steps [default: 4; teachers 25]."),
        click.option("--cfg", type=float, default=None, help="Teacher checkpoints: text guidance scale [default 5]."),
        click.option("--shift", type=float, default=None, help="Teacher checkpoints: time shift [default: dynamic]."),
        click.option("--negative-embedding", type=FILE,
                     help="Teacher checkpoints: caption embedding of the negative prompt "
                          "[default: pid_trt.text.NEGATIVE_PROMPT, encoded with --text-encoder]."),
    ])(fn)


def caption_options(fn: Callable) -> Callable:
    """Where caption embeddings come from: a file, or a local text encoder."""
    return _options([
        click.option("--caption-embedding", type=FILE, help="safetensors with y [1 or N, L, D] (pid-trt embed)."),
        click.option("--text-encoder", type=DIR, help="Local gemma-2-2b-it directory (embeddings are cached)."),
    ])(fn)


def format_option(fn: Callable) -> Callable:
    return click.option("--format", "fmt", type=click.Choice(["png", "jpg"]), default="jpg", show_default=True,
                        help="Image file format (png is lossless).")(fn)


# -- the net under test (parity, bench) ----------------------------------------------------------------------

def _overrides(ctx: click.Context, param: click.Parameter, items: tuple[str, ...]) -> dict[str, Any]:
    """KEY=VALUE tiny-net config overrides; values become ints, floats or strings."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE (e.g. patch_depth=2)", ctx, param)
        for cast in (int, float, str):
            try:
                out[key.strip()] = cast(value)
                break
            except ValueError:
                continue
    return out


def source_options(fn: Callable) -> Callable:
    """Where the net under test comes from; shared by `parity` and `bench`."""
    return _options([
        click.option("--engine-dir", type=DIR, help="TensorRT engines (pid-trt build)."),
        click.option("--onnx-dir", type=DIR, help="ONNX export (pid-trt export)."),
        click.option("--checkpoint", type=FILE, help="model_ema_bf16.pth (torch)."),
        net_options,
        click.option("--tiny", "tiny_structure", default=None, metavar="STRUCTURE",
                     help=f"Built-in tiny seeded net of this structure (the default, {TINY_STRUCTURE}, "
                          "when no files are given)."),
        click.option("--tiny-seed", type=int, default=None,
                     help="Seed of the tiny net [default 0]; with --onnx-dir/--engine-dir it names the reference "
                          "weights of an in-memory tiny export."),
        click.option("--tiny-init", type=click.Choice(["tame", "aggressive"]), default="tame", show_default=True),
        click.option("--tiny-override", "tiny_overrides", multiple=True, metavar="KEY=VALUE", callback=_overrides,
                     help="Tiny-net config key, e.g. patch_depth=2 (repeatable)."),
        click.option("--device", default=None, help="cpu, cuda, cuda:1 … [default: cuda when available]."),
        click.option("--precision", type=click.Choice(EXPORT_PRECISIONS), default=None,
                     help="torch: autocast (fp32|bf16); tiny onnxruntime: the export's precision [default fp32]."),
        click.option("--compile", is_flag=True, help="torch backend: torch.compile the denoiser."),
    ])(fn)

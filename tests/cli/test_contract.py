"""The CLI contract on every command: one vocabulary (sizes, --out/-o, --json, -v/-q), exit status 0/1/2/3, and stderr
made of `note:`/`warning:` lines with exactly one `error:` line last (README, "CLI")."""
from __future__ import annotations

import importlib

import click
import pytest
from click.testing import CliRunner

from pid_trt.cli import cli
from pid_trt.cli.options import SIZE

COMMANDS = sorted(cli.commands)


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def check_stderr(res, code: int) -> str:
    """The exit status, and stderr: notes/warnings, then exactly one `error:` line; returns that line."""
    assert res.exit_code == code, res.output
    lines = res.stderr.splitlines()
    assert lines and lines[-1].startswith("error: "), res.stderr
    assert all(line.startswith(("note: ", "warning: ")) for line in lines[:-1]), res.stderr
    assert "Traceback" not in res.output
    return lines[-1]


def _options(name: str) -> dict[str, click.Parameter]:
    return {p.name: p for p in cli.commands[name].params}


# -- one vocabulary --------------------------------------------------------------------------------------------

SIZED = [name for name in COMMANDS for p in cli.commands[name].params
         if p.name in ("size", "sizes") and p.type is SIZE]


def test_every_size_option_is_spelled_size():
    assert set(SIZED) == {"bench", "build", "generate", "parity"}
    for name in SIZED:
        (param,) = [p for p in cli.commands[name].params if p.name in ("size", "sizes")]
        assert param.opts[0] == "--size", (name, param.opts)


@pytest.mark.parametrize("name", SIZED)
@pytest.mark.parametrize("text, size", [("4096x3072", (4096, 3072)), ("4096×3072", (4096, 3072)),
                                        ("4096X3072", (4096, 3072)), ("4096,3072", (4096, 3072)),
                                        ("2048", (2048, 2048))])
def test_every_command_accepts_the_same_size_spellings(name, text, size):
    command = cli.commands[name]
    required = [a for p in command.params if p.required and isinstance(p, click.Option) for a in (p.opts[0], "x")]
    flags = ["--size"] + [a for a in ("--shape", "--resolution") if a in _option_strings(name)]
    for flag in flags:
        ctx = command.make_context(name, [*required, flag, text])
        value = ctx.params.get("sizes", ctx.params.get("size"))
        assert value in (size, (size,)), (name, flag, value)


def _option_strings(name: str) -> set[str]:
    return {o for p in cli.commands[name].params for o in p.opts}


@pytest.mark.parametrize("name", SIZED)
def test_every_command_refuses_the_same_bad_size(name):
    res = invoke(name, "--size", "4096x")
    assert "'4096x' is not a size" in check_stderr(res, 2)


@pytest.mark.parametrize("name", COMMANDS)
def test_shared_options(name):
    opts, params = _option_strings(name), _options(name)
    assert {"-v", "--verbose", "-q", "--quiet"} <= opts
    if "out" in params:
        assert {"--out", "-o"} <= set(params["out"].opts), name
    if "json_out" in params:
        assert params["json_out"].opts[0] == "--json", name


# -- exit status and stderr ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", COMMANDS)
def test_usage_errors_are_one_line_exit_2(name):
    line = check_stderr(invoke(name, "--no-such-option"), 2)
    assert "No such option" in line and f"pid-trt {name} --help" in line


def test_no_command_prints_the_help():
    res = invoke()
    assert res.exit_code == 0 and "Commands:" in res.stdout
    assert check_stderr(invoke("no-such-command"), 2).startswith("error: No such command")


# one expected failure per command: bad input or a missing tool is exit 2
BAD_INPUT = {
    "bench": (["--onnx-dir", "{tmp}/missing"], "does not exist"),
    "build": (["--backbone", "no-such-backbone", "--dry-run"], "no-such-backbone"),
    "decode": (["--onnx-dir", "{tmp}", "--latents", "{tmp}/missing.safetensors", "--caption-embedding", "{tmp}/y"],
               "does not exist"),
    "demo": None,  # below: the package data is missing
    "embed": (["--text-encoder", "{tmp}", "a red fox"], "give --out"),
    "engines": (["{tmp}/missing"], "does not exist"),
    "export": (["--backbone", "no-such-backbone"], "no-such-backbone"),
    "fp8-sweep": (["--backbone", "no-such-backbone"], "no-such-backbone"),
    "generate": (["--model-dir", "{tmp}/missing", "--prompt", "a fox", "--backbone", "flux", "--tiny",
                  "--caption-embedding", "{tmp}/y"], "does not exist"),
    "inspect": (["{tmp}/missing.pth"], "does not exist"),
    "parity": (["--onnx-dir", "{tmp}/missing"], "does not exist"),
    "reconstruct": (["--vae", "{tmp}", "--image", "{tmp}/missing.png", "--backbone", "flux", "--tiny"],
                    "does not exist"),
    "serve": (["--onnx-dir", "{tmp}", "--replicas", "0"], "--replicas"),
}


@pytest.mark.parametrize("name", COMMANDS)
def test_bad_input_is_exit_2(name, tmp_path, monkeypatch):
    if name == "demo":
        from pid_trt.workflows import demo

        monkeypatch.setattr(demo, "demo_data", lambda: tmp_path / "missing")
        args, message = [], "demo data is missing"
    else:
        if name == "serve":
            pytest.importorskip("pydantic", reason="pid-trt serve validates its options with pydantic")
        args, message = BAD_INPUT[name]
    assert message in check_stderr(invoke(name, *[a.format(tmp=tmp_path) for a in args]), 2)


# one unexpected failure per command: a library function raising RuntimeError is an internal error, exit 3
INTERNAL = {
    "bench": ("pid_trt.workflows.checks.run_bench", []),
    "build": ("pid_trt.engines.plan.make_plan", ["--backbone", "flux", "--dry-run", "--random-weights"]),
    "decode": ("pid_trt.workflows.inputs.read_latents",
               ["--onnx-dir", "{tmp}", "--latents", "{tmp}", "--caption-embedding", "{tmp}/y"]),
    "demo": ("pid_trt.workflows.demo.run_demo", ["--out", "{tmp}/demo"]),
    "embed": ("pid_trt.text.embed_prompts", ["--text-encoder", "{tmp}", "a red fox", "--out", "{tmp}/y.safetensors"]),
    "engines": ("pid_trt.engines.store.list_engines", ["{tmp}"]),
    "export": ("pid_trt.export.export_onnx", ["--backbone", "flux", "--out", "{tmp}/onnx"]),
    "fp8-sweep": ("pid_trt.workflows.checks.run_fp8_sweep", ["--backbone", "flux"]),
    "generate": ("pid_trt.workflows.generate.check_pipeline_dir",
                 ["--model-dir", "{tmp}", "--prompt", "a fox", "--backbone", "flux", "--tiny",
                  "--caption-embedding", "{tmp}/y"]),
    "inspect": ("pid_trt.checkpoint.inspect_checkpoint", ["{tmp}/model_ema_bf16.pth"]),
    "parity": ("pid_trt.workflows.checks.check_parity", []),
    "reconstruct": ("pid_trt.vae.check_vae_dir",
                    ["--vae", "{tmp}", "--image", "{tmp}/y", "--backbone", "flux", "--tiny"]),
    "serve": ("pid_trt.serve.config.ServeConfig.parse", ["--onnx-dir", "{tmp}"]),
}


def _boom(*args, **kwargs):
    raise RuntimeError("boom")


@pytest.mark.parametrize("name", COMMANDS)
def test_internal_errors_are_exit_3(name, tmp_path, monkeypatch):
    target, args = INTERNAL[name]
    if name == "serve":
        pytest.importorskip("pydantic", reason="pid-trt serve validates its options with pydantic")
    (tmp_path / "y").write_bytes(b"")  # an existing file where one is needed
    module, _, attr = target.rpartition(".")
    try:  # by module object: pid_trt.workflows re-exports a function named like its module `generate`
        monkeypatch.setattr(importlib.import_module(module), attr, _boom)
    except ModuleNotFoundError:  # a class attribute
        monkeypatch.setattr(target, classmethod(_boom))
    line = check_stderr(invoke(name, *[a.format(tmp=tmp_path) for a in args]), 3)
    assert line.startswith("error: internal error: RuntimeError: boom") and "rerun with -v" in line


def test_internal_error_with_v_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setattr("pid_trt.engines.store.list_engines", _boom)
    res = invoke("engines", tmp_path, "-v")
    assert res.exit_code == 3 and "Traceback" in res.stderr and res.stderr.splitlines()[-1].startswith("error: ")


def test_check_failed_is_exit_1(monkeypatch):
    """`parity` and `demo` exit 1 when their check fails (demo: tests/test_demo.py)."""
    from pid_trt import parity

    monkeypatch.setattr(parity, "FP32", parity.Tolerance("never", "fp32", velocity_max_abs=-1.0))
    res = invoke("parity", "--tiny-override", "patch_depth=2", "--tiny-override", "pixel_depth=1")
    assert res.exit_code == 1 and "FAIL" in res.stdout, res.output


@pytest.mark.parametrize("args", [["engines", "{tmp}"],
                                  ["build", "--backbone", "flux", "--dry-run", "--random-weights"],
                                  ["parity", "--tiny-override", "patch_depth=2", "--tiny-override", "pixel_depth=1"]])
def test_success_is_exit_0(args, tmp_path):
    res = invoke(*[a.format(tmp=tmp_path) for a in args])
    assert res.exit_code == 0, res.output
    assert all(line.startswith(("note: ", "warning: ")) for line in res.stderr.splitlines()), res.stderr


def test_tensorrt_messages_follow_verbosity():
    """TensorRT's messages go through the `pid_trt.tensorrt` logger: warnings by default and with -q, info with -v."""
    import logging

    from pid_trt.cli.options import configure_logging
    from pid_trt.engines.detect import logging_level

    trt_log = logging.getLogger("pid_trt.tensorrt")
    warning, info, verbose = logging_level(2), logging_level(3), logging_level(4)
    try:
        for verbosity, shown in ((-1, {warning}), (0, {warning}), (1, {warning, info})):
            configure_logging(verbosity)
            assert {lv for lv in (warning, info, verbose) if trt_log.isEnabledFor(lv)} == shown, verbosity
    finally:
        configure_logging(0)
    assert logging_level(0) >= logging_level(1) >= logging.ERROR

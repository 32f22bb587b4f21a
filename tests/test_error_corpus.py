"""The error contract, cause by cause: bad artifacts, bad inputs and bad environments are answered, never crash.

Every case runs through the CLI (exit 2, exactly one stderr line and it starts with `error: `, no traceback, no
output files left behind) and through the Python API (a PiDError subclass). The causes:

1. weights identity (no silent random weights; artifacts of other weights refused; names carry the weights)
2. files are what the manifest or sidecar says (inside the directory, unchanged, external data inside)
3. manifests and sidecars validated against the shipped JSON Schemas
4. weights with NaN/Inf refused at load, the tensor named
5. sizes bounded before work starts (memory estimate, absurd aspect ratios)
6. degenerate inputs refused, never coerced, on every backend
7. environment and outputs checked up front
8. a killed export's temporary directory is removed by the next one
"""
from __future__ import annotations

import copy
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import onnx
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import pid_trt
from pid_trt import integrity, memory
from pid_trt.cli import _register, cli
from pid_trt.errors import CheckpointError, ConfigError, PiDInputError
from pid_trt.export.manifest import read_manifest
from pid_trt.runtime import PiDDecoder
from pid_trt.tiny import tiny_config, tiny_net
from tests.conftest import data_file
from tests.engines.manifest import flux2_manifest, write_onnx_dir

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY = dict(patch_depth=2, pixel_depth=1)


# -- the contract --------------------------------------------------------------------------------------------

def run(*args, env=None):
    _register()
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def assert_one_error(result, *fragments: str) -> str:
    """Exit 2, one stderr line that starts with `error: ` (the last; any other is a warning or note), no
    traceback, and the line holds every fragment."""
    lines = result.stderr.splitlines()
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], lines
    assert all(line.startswith(("warning: ", "note: ")) for line in lines[:-1]), lines
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    return lines[-1]


def assert_nothing_written(path: pathlib.Path) -> None:
    assert not path.exists() or not any(path.rglob("*")), sorted(path.rglob("*"))


def assert_subprocess_contract(proc: subprocess.CompletedProcess) -> None:
    """The same contract for a real process: what third-party code prints on fd 2 counts too."""
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr
    assert lines and lines[-1].startswith("error: "), lines
    assert all(line.startswith(("warning: ", "note: ")) for line in lines[:-1]), lines


def pid_trt_process(*args, env=None, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "pid_trt", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300, **kw)


# -- shared artifacts (module scope: each export costs seconds) ------------------------------------------------

def save_checkpoint(net, path: pathlib.Path) -> pathlib.Path:
    save_file({f"net.{k}": v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny net config file, two checkpoints of different weights, an export of checkpoint A made by the CLI
    (after a killed export left a temporary directory at the same place), a RANDOM export, inputs."""
    root = tmp_path_factory.mktemp("corpus")
    config = tiny_config("V15-16", **TINY)
    (root / "tiny.json").write_text(json.dumps(config.to_dict()))
    ckpt_a = save_checkpoint(tiny_net("V15-16", seed=1, **TINY), root / "a.safetensors")
    ckpt_b = save_checkpoint(tiny_net("V15-16", seed=2, **TINY), root / "b.safetensors")
    stale = root / ".export_a.killed"  # what a SIGKILLed export leaves: its writer lock is free
    stale.mkdir()
    (stale / ".pid-trt-writer.lock").touch()
    (stale / "cond.onnx").write_bytes(b"half")
    os.utime(stale / ".pid-trt-writer.lock", (time.time() - 60,) * 2)
    cwd = os.getcwd()
    os.chdir(root)  # a relative --checkpoint: the manifest still records it absolutely
    try:
        result = run("export", "--net-config", "tiny.json", "--checkpoint", "a.safetensors", "--out", "export_a")
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    # a manifest that records RANDOM weights (what `pid-trt export` without --checkpoint writes)
    random_export = pathlib.Path(shutil.copytree(root / "export_a", root / "export_random"))
    rewrite_manifest(random_export, lambda m: m.update(weights={"source": "random", "sha256": m["weights"]["sha256"]}))
    g = torch.Generator().manual_seed(0)
    latents = root / "latents.safetensors"
    save_file({"lq_latent": torch.randn(2, 16, 2, 3, generator=g)}, str(latents))
    caption = root / "y.safetensors"
    save_file({"y": torch.randn(1, 8, 32, generator=g)}, str(caption))
    return {"root": root, "config": config, "ckpt_a": ckpt_a, "ckpt_b": ckpt_b, "export_a": root / "export_a",
            "random": random_export, "latents": latents, "caption": caption, "stale": stale}


def decode_args(files, source: list, out: pathlib.Path, *extra):
    return ["decode", *source, "--latents", files["latents"], "--caption-embedding", files["caption"], "--out", out,
            *extra]


def copy_export(files, tmp_path, which="export_a") -> pathlib.Path:
    return pathlib.Path(shutil.copytree(files[which], tmp_path / which))


def rewrite_manifest(onnx_dir: pathlib.Path, change) -> None:
    path = onnx_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def rehash(onnx_dir: pathlib.Path, graph: str) -> None:
    """Record a graph file's new sha256, as an attacker who also edits the manifest would."""
    rewrite_manifest(onnx_dir, lambda m: m["graphs"][graph].update(
        sha256=integrity.sha256_file(onnx_dir / m["graphs"][graph]["file"])))


# -- 1. weights identity -------------------------------------------------------------------------------------

def test_build_without_weights_is_refused(tmp_path):
    result = run("build", "--backbone", "flux2", "--ckpt", "2kto4k", "--dry-run", "--engine-dir", tmp_path / "e")
    assert_one_error(result, "--checkpoint", "--random-weights")
    assert_nothing_written(tmp_path / "e")
    from pid_trt.engines.plan import make_plan

    with pytest.raises(ConfigError, match="--checkpoint"):
        make_plan(backbone="flux2", ckpt="2kto4k", precision=None, onnx_dir=None, engine_dir=tmp_path / "e")


def test_random_weights_say_random(files, tmp_path):
    result = run("build", "--backbone", "flux2", "--ckpt", "2kto4k", "--random-weights", "--dry-run", "--json",
                 "--engine-dir", tmp_path / "e")
    plan = json.loads(result.stdout)
    assert plan["weights_id"] == "RANDOM" and plan["random_weights"] and "_wRANDOM_" in plan["engine_name"]
    assert "weights: RANDOM" in run("inspect", files["random"]).stdout.replace("  ", "")
    out = tmp_path / "out"
    result = run("decode", "--tiny", "--backbone", "flux", "--ckpt", "2kto4k_v1pt5", "--latents", files["latents"],
                 "--caption-embedding", files["caption"], "--out", out)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())["weights"]
    assert summary["random"] and summary["id"] == "RANDOM" and summary["description"].startswith("RANDOM")


def test_export_records_the_checkpoint_absolutely(files, tmp_path, monkeypatch):
    weights = read_manifest(files["export_a"])["weights"]
    assert weights["checkpoint"] == {"path": str(files["ckpt_a"].resolve()),
                                     "sha256": integrity.sha256_file(files["ckpt_a"])}
    monkeypatch.chdir(tmp_path)  # parity finds the reference weights from any directory
    from pid_trt.workflows.sources import Sources

    net, how = Sources(onnx_dir=files["export_a"]).reference_net()
    assert how == f"checkpoint {files['ckpt_a'].resolve()}"


def test_artifacts_of_other_weights_are_refused(files, tmp_path):
    for export, fragment in ((files["export_a"], "was made from"), (files["random"], "RANDOM weights")):
        out = tmp_path / "out"
        result = run(*decode_args(files, ["--onnx-dir", export, "--checkpoint", files["ckpt_b"]], out))
        assert_one_error(result, fragment, str(files["ckpt_b"]))
        assert_nothing_written(out)
        with pytest.raises(PiDInputError, match=fragment):
            PiDDecoder.load(export, checkpoint=files["ckpt_b"])
    result = run("parity", "--onnx-dir", files["export_a"], "--reference-checkpoint", files["ckpt_b"])
    assert_one_error(result, "was made from")
    result = run("build", "--onnx-dir", files["export_a"], "--checkpoint", files["ckpt_b"], "--backbone", "flux",
                 "--ckpt", "2kto4k_v1pt5", "--shape", "256x256", "--dry-run")
    assert_one_error(result, "was made from")
    assert PiDDecoder.load(files["export_a"], checkpoint=files["ckpt_a"]).weights["checkpoint"]


def test_different_weights_never_share_an_engine_name(tmp_path):
    from pid_trt.engines.plan import make_plan

    def name(manifest, label):
        plan = make_plan(backbone=None, ckpt=None, precision=None, shapes=[(2048, 2048)],
                         onnx_dir=write_onnx_dir(tmp_path / label, manifest), engine_dir=tmp_path / "e")
        return plan.name("10.13.0", None)

    base = flux2_manifest()
    from_a, from_b, in_memory = copy.deepcopy(base), copy.deepcopy(base), copy.deepcopy(base)
    from_a["weights"] = {"source": "/a.pth", "sha256": "1" * 64, "checkpoint": {"path": "/a.pth", "sha256": "2" * 64}}
    from_b["weights"] = {"source": "/b.pth", "sha256": "3" * 64, "checkpoint": {"path": "/b.pth", "sha256": "4" * 64}}
    in_memory["weights"] = {"source": "in-memory", "sha256": "5" * 64}
    names = [name(m, label) for m, label in ((base, "random"), (from_a, "a"), (from_b, "b"), (in_memory, "mem"))]
    assert len(set(names)) == 4 and "_wRANDOM_" in names[0] and "_w22222222_" in names[1]
    fp8 = [copy.deepcopy(flux2_manifest("fp8")) for _ in range(3)]
    fp8[0]["graphs"]["denoise"]["fp8"] = {"calibration": {"decodes": 6}, "seconds": 1.0}
    fp8[1]["graphs"]["denoise"]["fp8"] = {"calibration": {"decodes": 6}, "seconds": 9.0}  # timings do not count
    fp8[2]["graphs"]["denoise"]["fp8"] = {"calibration": {"decodes": 6}, "keep_high": ["patch_blocks.0"]}
    q = [name(m, f"fp8_{i}") for i, m in enumerate(fp8)]
    assert q[0] == q[1] != q[2] and "_q<unknown>_" not in q[0]


# -- 2. files are what the manifest says ---------------------------------------------------------------------

def test_a_tampered_graph_is_refused(files, tmp_path):
    onnx_dir = copy_export(files, tmp_path)
    with open(onnx_dir / "denoise.onnx", "ab") as f:
        f.write(b"\0")
    out = tmp_path / "out"
    assert_one_error(run(*decode_args(files, ["--onnx-dir", onnx_dir], out)), "denoise", "changed since")
    assert_nothing_written(out)
    with pytest.raises(PiDInputError, match="changed since"):
        PiDDecoder.load(onnx_dir)
    with pytest.raises(PiDInputError, match="changed since"):
        read_manifest(onnx_dir, verify=True)


@pytest.mark.parametrize("name, fragment", [("../outside.onnx", "lies outside"), ("/etc/hostname", "lies outside"),
                                            ("link.onnx", "a link that leads out"),
                                            (["cond.onnx"], "graphs.cond.file must be a string")])
def test_a_manifest_path_outside_its_directory_is_refused(files, tmp_path, name, fragment):
    onnx_dir = copy_export(files, tmp_path)
    (tmp_path / "outside.onnx").write_bytes((onnx_dir / "cond.onnx").read_bytes())
    (onnx_dir / "link.onnx").symlink_to(tmp_path / "outside.onnx")
    rewrite_manifest(onnx_dir, lambda m: m["graphs"]["cond"].update(file=name))
    out = tmp_path / "out"
    assert_one_error(run(*decode_args(files, ["--onnx-dir", onnx_dir], out)), fragment)
    assert_nothing_written(out)
    assert_one_error(run("inspect", onnx_dir), fragment)
    with pytest.raises(PiDInputError, match=fragment):
        read_manifest(onnx_dir)


def test_onnx_external_data_outside_the_directory_is_refused(files, tmp_path):
    onnx_dir = copy_export(files, tmp_path)
    model = onnx.load(str(onnx_dir / "cond.onnx"))
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    (tmp_path / "secret.data").write_bytes(tensor.raw_data)
    onnx.external_data_helper.set_external_data(tensor, location="../secret.data")
    tensor.ClearField("raw_data")
    onnx.save(model, str(onnx_dir / "cond.onnx"))
    rehash(onnx_dir, "cond")
    out = tmp_path / "out"
    assert_one_error(run(*decode_args(files, ["--onnx-dir", onnx_dir], out)), "external data", "lies outside")
    assert_nothing_written(out)
    with pytest.raises(PiDInputError, match="lies outside"):
        PiDDecoder.load(onnx_dir)


def test_engine_files_outside_the_directory_are_refused(tmp_path):
    from pid_trt.engines.store import EngineStore, verify_engine_files

    sidecar = json.loads(data_file("sidecar", "pid_tiny_fixture.json").read_text())
    sidecar["engines"]["cond"]["file"] = "../pid_tiny_fixture.cond.engine"
    (tmp_path / "pid_tiny_fixture.json").write_text(json.dumps(sidecar))
    [item] = EngineStore(tmp_path).scan()  # listed with its problem, never raised
    assert "lies outside" in item.status
    with pytest.raises(PiDInputError, match="lies outside"):
        verify_engine_files(tmp_path, sidecar)
    result = run("engines", tmp_path)
    assert result.exit_code == 0 and "lies outside" in result.stdout


def test_hashes_are_cached_by_file_version(tmp_path, monkeypatch):
    monkeypatch.setenv("PID_TRT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(integrity, "DISK_CACHE_MIN_BYTES", 0)
    monkeypatch.setattr(integrity, "_memory", {})
    calls = []
    real = integrity.sha256_file
    monkeypatch.setattr(integrity, "sha256_file", lambda p: calls.append(p) or real(p))
    path = tmp_path / "big.bin"
    path.write_bytes(b"x" * 1000)
    first = integrity.file_sha256(path)
    assert integrity.file_sha256(path) == first and len(calls) == 1
    monkeypatch.setattr(integrity, "_memory", {})  # a new process: the disk cache answers
    assert integrity.file_sha256(path) == first and len(calls) == 1
    path.write_bytes(b"y" * 1000)  # same size and inode, another mtime: hashed again
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert integrity.file_sha256(path) != first and len(calls) == 2


# -- 3. validated formats ------------------------------------------------------------------------------------

def _set(keys, value):
    def change(doc):
        node = doc
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return change


def _drop(keys):
    def change(doc):
        node = doc
        for key in keys[:-1]:
            node = node[key]
        del node[keys[-1]]
    return change


MANIFEST_FAULTS = [
    ("missing key", _drop(["graphs", "cond", "sha256"]), "lacks graphs.cond.sha256"),
    ("wrong type", _set(["weights", "sha256"], 5), "weights.sha256 must be a string"),
    ("list for object", _set(["graphs", "cond"], []), "graphs.cond must be an object"),
    ("wrong const", _set(["format"], "something-else"), "field format"),
    ("sampler without t-lists", _drop(["sampler", "t_lists", "8"]), "lacks sampler.t_lists.8"),
    ("bad shape entry", _set(["graphs", "denoise", "inputs", 0, "shape", 0], 1.5),
     "graphs.denoise.inputs[0].shape[0] must be an integer or a string"),
    ("bad net config", _set(["net_config", "hidden_size"], "wide"), "hidden_size must be int"),
]


@pytest.mark.parametrize("label, change, fragment", MANIFEST_FAULTS, ids=[c[0] for c in MANIFEST_FAULTS])
def test_malformed_manifests(tmp_path, label, change, fragment):
    onnx_dir = write_onnx_dir(tmp_path / "onnx", flux2_manifest())
    rewrite_manifest(onnx_dir, change)
    assert_one_error(run("build", "--onnx-dir", onnx_dir, "--dry-run"), fragment)
    with pytest.raises(PiDInputError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        read_manifest(onnx_dir)


@pytest.mark.parametrize("label, text, fragment", [
    ("non-UTF-8", b'{"format": "\xff"}', "not UTF-8"),
    ("6000-digit number", b'{"format": "pid-trt-onnx", "opset": 1' + b"0" * 6000 + b"}", "field opset holds a number"),
    ("NaN", b'{"format": "pid-trt-onnx", "opset": NaN}', "field opset holds NaN"),
    ("not JSON", b'{"format": ', "not valid JSON"),
    ("a list", b"[1, 2]", "must be an object"),
])
def test_unreadable_manifests(tmp_path, label, text, fragment):
    onnx_dir = tmp_path / "onnx"
    onnx_dir.mkdir()
    (onnx_dir / "manifest.json").write_bytes(text)
    assert_one_error(run("inspect", onnx_dir), fragment)
    with pytest.raises(PiDInputError, match=fragment):
        read_manifest(onnx_dir)


SIDECAR_FAULTS = [
    ("missing engines", _drop(["engines"]), "lacks engines"),
    ("engines as a list", _set(["engines"], []), "engines must be an object"),
    ("engine file not a string", _set(["engines", "cond", "file"], None), "engines.cond.file must be a string"),
    ("short profile range", _set(["profiles", 0, "batch"], [1, 1]), "profiles[0].batch"),
    ("gpu as a string", _set(["gpu"], "H100"), "gpu must be an object"),
]


@pytest.mark.parametrize("label, change, fragment", SIDECAR_FAULTS, ids=[c[0] for c in SIDECAR_FAULTS])
def test_malformed_sidecars_are_listed_not_raised(tmp_path, label, change, fragment):
    from pid_trt.engines.store import EngineStore

    sidecar = json.loads(data_file("sidecar", "pid_tiny_fixture.json").read_text())
    change(sidecar)
    (tmp_path / "pid_tiny_fixture.json").write_text(json.dumps(sidecar))
    [item] = EngineStore(tmp_path).scan()
    assert item.sidecar is None and item.status.startswith("malformed sidecar") and fragment in item.status
    result = run("engines", tmp_path)
    assert result.exit_code == 0 and "malformed sidecar" in result.stdout
    with pytest.raises(PiDInputError, match="engine sidecar"):
        EngineStore(tmp_path).read_sidecar("pid_tiny_fixture")


def test_cpp_sidecar_fixtures_follow_the_schema():
    from pid_trt.formats import validate

    fixtures = [data_file("sidecar", "pid_tiny_fixture.json"), *sorted((ROOT / "cpp" / "tests").rglob("*.json"))]
    for path in fixtures:
        validate(json.loads(path.read_text()), "sidecar", str(path))


# -- 4. weights that cannot decode ---------------------------------------------------------------------------

def test_nan_in_a_checkpoint_is_refused(files, tmp_path):
    net = tiny_net("V15-16", seed=3, **TINY)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["patch_blocks.1.attn.qkv_x.weight"][0, 0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_file({f"net.{k}": v.contiguous() for k, v in state.items()}, str(path))
    out = tmp_path / "out"
    result = run("export", "--net-config", files["root"] / "tiny.json", "--checkpoint", path, "--out", out)
    assert_one_error(result, "patch_blocks.1.attn.qkv_x.weight", "NaN")
    assert_nothing_written(out)
    from pid_trt.checkpoint import load_net

    with pytest.raises(CheckpointError, match="patch_blocks.1.attn.qkv_x.weight"):
        load_net(path, files["config"])


def test_nan_in_exported_graph_weights_is_refused(files, tmp_path):
    import numpy as np
    from onnx import numpy_helper

    onnx_dir = copy_export(files, tmp_path)
    model = onnx.load(str(onnx_dir / "denoise.onnx"))
    index, tensor = max(enumerate(model.graph.initializer), key=lambda t: t[1].ByteSize())
    values = numpy_helper.to_array(tensor).copy()
    values.reshape(-1)[0] = np.inf
    model.graph.initializer[index].CopyFrom(numpy_helper.from_array(values, tensor.name))
    onnx.save(model, str(onnx_dir / "denoise.onnx"))
    rehash(onnx_dir, "denoise")
    out = tmp_path / "out"
    assert_one_error(run(*decode_args(files, ["--onnx-dir", onnx_dir], out)), tensor.name, "NaN or Inf")
    assert_nothing_written(out)
    with pytest.raises(PiDInputError, match="NaN or Inf"):
        PiDDecoder.load(onnx_dir)


# -- 5. sizes bounded before work starts ------------------------------------------------------------------------

def test_a_size_that_cannot_fit_is_refused_in_seconds(tmp_path):
    start = time.perf_counter()
    result = run("bench", "--size", "262144x262144", "--iters", "1", "--warmup", "0")
    assert_one_error(result, "262144x262144", "the largest size of this aspect ratio that fits is")
    result = run("parity", "--size", "262144x131072")
    assert_one_error(result, "the largest size of this aspect ratio that fits is")
    result = run("bench", "--text-len", "4000000000", "--iters", "1", "--warmup", "0")  # the caption alone
    assert_one_error(result, "needs about", "not even the smallest size fits")
    assert time.perf_counter() - start < 60  # nothing was allocated or run


def test_decode_refuses_what_the_device_cannot_hold(files, tmp_path, monkeypatch):
    weights = sum(p.stat().st_size for p in files["export_a"].iterdir())
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": weights + 5 * 2**19)
    out = tmp_path / "out"
    result = run(*decode_args(files, ["--onnx-dir", files["export_a"]], out, "--batch-size", "2"))
    assert_one_error(result, "96x64 at batch 2", "the largest size of this aspect ratio that fits is")
    assert_nothing_written(out)
    decoder = PiDDecoder.from_net(tiny_net("V15-16", **TINY))
    z = torch.randn(2, 16, 8, 8)
    with pytest.raises(PiDInputError, match="largest size of this aspect ratio that fits is"):
        decoder.decode(z, torch.randn(2, 8, 32))


def test_build_plans_are_checked_against_the_largest_gpu(tmp_path):
    result = run("build", "--backbone", "flux2", "--ckpt", "2kto4k", "--random-weights", "--dry-run",
                 "--shape", "8192x8192", "--batch", "1:1:64", "--engine-dir", tmp_path / "e")
    assert_one_error(result, "profile 8192x8192", memory.LARGEST_TARGET_GPU[0], "largest size")
    assert_nothing_written(tmp_path / "e")


def test_absurd_aspect_ratios_are_refused(files, tmp_path):
    latents = tmp_path / "strip.safetensors"
    save_file({"lq_latent": torch.randn(1, 16, 1, 40)}, str(latents))
    out = tmp_path / "out"
    result = run("decode", "--onnx-dir", files["export_a"], "--latents", latents, "--caption-embedding",
                 files["caption"], "--out", out)
    assert_one_error(result, "aspect ratio of 40:1")
    assert_nothing_written(out)
    net = tiny_net("V15-16", **TINY)
    with pytest.raises(PiDInputError, match="aspect ratio"):
        pid_trt.sample(net, torch.randn(1, 16, 1, 40), torch.randn(1, 8, 32), 0.0)


def test_embed_refuses_a_text_length_that_cannot_fit(tmp_path):
    out = tmp_path / "y.safetensors"
    result = run("embed", "--text-encoder", data_file("text", "tiny_gemma2"), "--max-length", "100000000",
                 "hello", "--out", out, "--no-cache")
    assert_one_error(result, "text length of 100000000", "the largest --max-length that fits is")
    assert not out.exists()


# -- 6. degenerate inputs, the same on every backend -------------------------------------------------------------

@pytest.fixture(scope="module", params=["torch", "onnxruntime"])
def decoder(request, files):
    if request.param == "torch":
        return PiDDecoder.from_net(tiny_net("V15-16", seed=1, **TINY))
    return PiDDecoder.load(files["export_a"])


Z, Y = torch.randn(2, 16, 2, 3), torch.randn(2, 8, 32)
DEGENERATE = [
    ("zero steps", dict(steps=0), "steps must be a positive integer"),
    ("integer latent", dict(lq_latent=torch.ones(2, 16, 2, 3, dtype=torch.int64)), "must be a floating-point"),
    ("complex caption", dict(caption_embedding=torch.randn(2, 8, 32, dtype=torch.complex64)), "floating-point"),
    ("numpy latent", dict(lq_latent=Z.numpy()), "must be a torch tensor"),
    ("empty batch", dict(lq_latent=torch.randn(0, 16, 2, 3), caption_embedding=torch.randn(0, 8, 32)), "is empty"),
    ("zero-size latent", dict(lq_latent=torch.randn(2, 16, 0, 3)), "is empty"),
    ("empty caption", dict(caption_embedding=torch.randn(2, 0, 32)), "caption embedding is empty"),
    ("negative seed", dict(seed=-1), "must lie in 0.."),
    ("seed past 2^63-1", dict(seed=2**63 - 1), "must lie in 0.."),
    ("float seed", dict(seed=1.5), "seed must be an integer"),
    ("sigma count", dict(degrade_sigma=torch.tensor([0.1, 0.2, 0.3])), "degrade_sigma has 3 values"),
    ("integer sigma tensor", dict(degrade_sigma=torch.tensor([0, 1])), "floating-point"),
]


@pytest.mark.parametrize("label, change, fragment", DEGENERATE, ids=[c[0] for c in DEGENERATE])
def test_degenerate_inputs(decoder, label, change, fragment):
    args = {"lq_latent": Z, "caption_embedding": Y, "degrade_sigma": 0.25, **change}
    with pytest.raises(PiDInputError, match=fragment):
        decoder.decode(**args)


def test_degenerate_inputs_through_the_cli(files, tmp_path):
    out = tmp_path / "out"
    source = ["--onnx-dir", files["export_a"]]
    assert_one_error(run(*decode_args(files, source, out, "--steps", "0")), "--steps")
    assert_one_error(run(*decode_args(files, source, out, "--seed", "-1")), "--seed")
    empty = tmp_path / "empty.safetensors"
    save_file({"y": torch.randn(1, 0, 32)}, str(empty))
    result = run("decode", *source, "--latents", files["latents"], "--caption-embedding", empty, "--out", out)
    assert_one_error(result, "caption embedding is empty")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    save_file({"lq_latent": torch.randn(1, 16, 2, 3)}, str(mixed / "a.safetensors"))
    save_file({"lq_latent": torch.randn(1, 16, 3, 2)}, str(mixed / "b.safetensors"))
    result = run("decode", *source, "--latents", mixed, "--caption-embedding", files["caption"], "--out", out,
                 "--batch-size", "2")
    assert_one_error(result, "different shapes", "cannot share a batch")
    assert_nothing_written(out)


def test_sample_computes_half_precision_captions_in_fp32():
    net = tiny_net("V15-16", **TINY)
    z, y = torch.randn(1, 16, 2, 3), torch.randn(1, 8, 32)
    ref = pid_trt.sample(net, z, y.bfloat16().float(), 0.25, generator=torch.Generator().manual_seed(0))
    out = pid_trt.sample(net, z, y.bfloat16(), 0.25, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, ref)
    with pytest.raises(PiDInputError, match="steps must be a positive integer"):
        pid_trt.sample(net, z, y, 0.25, steps=0)


# -- 7. environment and outputs --------------------------------------------------------------------------------

def test_out_that_is_a_file(files, tmp_path):
    target = tmp_path / "taken"
    target.write_text("keep me")
    assert_one_error(run(*decode_args(files, ["--onnx-dir", files["export_a"]], target)), "is a file")
    assert_one_error(run("export", "--net-config", files["root"] / "tiny.json", "--out", target), "is a file")
    assert_one_error(run("demo", "--out", target / "sub"), "cannot be created")
    assert target.read_text() == "keep me"
    from pid_trt.export import export_onnx

    with pytest.raises(PiDInputError, match="is a file"):
        export_onnx(target, net=tiny_net("V15-16", **TINY))


def test_read_only_out(files, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available on this filesystem (root ignores permission bits)")
    try:
        result = run(*decode_args(files, ["--onnx-dir", files["export_a"]], locked / "out"))
        assert_one_error(result, "not writable")
        with pytest.raises(PiDInputError, match="not writable"):
            from pid_trt.atomic import check_writable

            check_writable(locked / "out")
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)
    assert_nothing_written(locked)


def test_unwritable_caption_cache(tmp_path):
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("")
    out = tmp_path / "y.safetensors"
    result = run("embed", "--text-encoder", data_file("text", "tiny_gemma2"), "hello", "--out", out,
                 env={"PID_TRT_CACHE": str(blocker)})
    assert_one_error(result, "caption embedding cache", "cannot be created")
    assert not out.exists()
    from pid_trt.text import EmbeddingCache

    with pytest.raises(PiDInputError, match="caption embedding cache"):
        EmbeddingCache(blocker / "captions")


@pytest.mark.parametrize("env, fragment", [
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "inconsistent torchrun environment"),
    ({"WORLD_SIZE": "0"}, "inconsistent torchrun environment"),
])
def test_bad_torchrun_environments(files, tmp_path, monkeypatch, env, fragment):
    out = tmp_path / "out"
    assert_one_error(run(*decode_args(files, ["--onnx-dir", files["export_a"]], out), env=env), fragment)
    assert_nothing_written(out)
    from pid_trt.runtime.device import world

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(PiDInputError, match=fragment):
        world()


def test_a_rank_with_nothing_to_do_says_so(files, tmp_path, caplog):
    out = tmp_path / "out"
    with caplog.at_level("INFO", logger="pid_trt"):
        result = run(*decode_args(files, ["--onnx-dir", files["export_a"]], out), env={"WORLD_SIZE": "4", "RANK": "3"})
    assert result.exit_code == 0, result.output
    assert "rank 3 of 4 has nothing to do: 2 sample(s) for 4 ranks" in caplog.text


def test_non_utf8_prompt_and_config_files(files, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"a caption \xff\xfe\n")
    out = tmp_path / "y.safetensors"
    result = run("embed", "--text-encoder", data_file("text", "tiny_gemma2"), "--prompt-file", bad, "--out", out)
    assert_one_error(result, "cannot read prompt file")
    result = run("export", "--net-config", bad, "--out", tmp_path / "onnx")
    assert_one_error(result, "--net-config")
    assert not out.exists() and not (tmp_path / "onnx").exists()
    from pid_trt.workflows.reconstruct import read_manifest as read_images

    with pytest.raises(PiDInputError, match="cannot read manifest"):
        read_images(bad)


def test_broken_vae_and_pipeline_folders(files, tmp_path):
    vae = tmp_path / "vae"
    vae.mkdir()
    (vae / "config.json").write_text('{"_class_name": "AutoencoderKL",')
    image = tmp_path / "in.png"
    from PIL import Image

    Image.new("RGB", (64, 64)).save(image)
    out = tmp_path / "out"
    result = run("reconstruct", "--backbone", "flux", "--ckpt", "2kto4k_v1pt5", "--tiny", "--vae", vae, "--image",
                 image, "--caption-embedding", files["caption"], "--out", out)
    assert_one_error(result, "VAE config", "not valid JSON")
    assert_nothing_written(out)
    from pid_trt.vae import load_vae

    with pytest.raises(PiDInputError, match="VAE config"):
        load_vae(vae)
    pipe = tmp_path / "pipe"
    pipe.mkdir()
    (pipe / "model_index.json").write_bytes(b"\xff")
    result = run("generate", "--backbone", "flux", "--ckpt", "2kto4k_v1pt5", "--tiny", "--model-dir", pipe,
                 "--prompt", "a fox", "--caption-embedding", files["caption"], "--out", out)
    assert_one_error(result, "pipeline index", "not UTF-8")
    assert_nothing_written(out)
    from pid_trt.workflows.generate import load_pipeline

    with pytest.raises(PiDInputError, match="pipeline index"):
        load_pipeline(pipe, "flux")


def test_an_unloadable_text_encoder(tmp_path):
    encoder = pathlib.Path(shutil.copytree(data_file("text", "tiny_gemma2"), tmp_path / "gemma"))
    weights = encoder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    out = tmp_path / "y.safetensors"
    result = run("embed", "--text-encoder", encoder, "hello", "--out", out, "--no-cache")
    assert_one_error(result, "not a readable safetensors file")
    assert not out.exists()
    from pid_trt.text import CaptionEncoder

    with pytest.raises(PiDInputError, match="not a readable safetensors file"):
        CaptionEncoder.from_pretrained(encoder)


def test_no_third_party_lines_before_the_error(files, tmp_path):
    """In a real process: diffusers is imported and fails on a VAE folder after ONNX Runtime has opened its
    sessions; every stderr line is ours."""
    vae = tmp_path / "vae"
    vae.mkdir()
    (vae / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", "latent_channels": 16}))
    (vae / "diffusion_pytorch_model.safetensors").write_bytes(b"not weights")
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "in.png")
    proc = pid_trt_process("reconstruct", "--backbone", "flux", "--ckpt", "2kto4k_v1pt5", "--onnx-dir",
                           files["export_a"], "--vae", vae, "--image", tmp_path / "in.png", "--caption-embedding",
                           files["caption"], "--out", tmp_path / "out")
    assert_subprocess_contract(proc)
    assert "could not load the VAE" in proc.stderr.splitlines()[-1]


def test_click_usage_errors_are_one_line():
    assert_one_error(run("decode", "--no-such-option"), "No such option", "pid-trt decode --help")


# -- 8. cleanup ---------------------------------------------------------------------------------------------

def test_the_next_export_removes_a_killed_exports_temporaries(files):
    assert not files["stale"].exists()  # removed by the CLI export the fixture made
    assert not list(files["root"].glob(".export_a.*"))


def test_a_killed_writer_is_cleaned_and_a_live_one_is_not(tmp_path):
    from pid_trt.atomic import remove_stale_temporaries

    target = tmp_path / "export"
    script = ("import sys, time; from pid_trt.atomic import atomic_directory\n"
              "with atomic_directory(sys.argv[1]) as tmp:\n    print(tmp, flush=True); time.sleep(120)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writers = [subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True,
                                env=env) for _ in range(2)]
    try:
        dirs = [pathlib.Path(w.stdout.readline().strip()) for w in writers]
        writers[0].send_signal(signal.SIGKILL)
        writers[0].wait(30)
        for d in dirs:  # both markers old enough to be judged
            os.utime(d / ".pid-trt-writer.lock", (time.time() - 60,) * 2)
        assert remove_stale_temporaries(target) == [dirs[0]]
        assert not dirs[0].exists() and dirs[1].exists()
    finally:
        for w in writers:
            w.kill()
            w.wait(30)

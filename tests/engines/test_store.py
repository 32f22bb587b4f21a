"""Engine store: names, sidecars, compatibility reasons, find_engine, atomic and locked writes."""
from __future__ import annotations

import hashlib
import json
import multiprocessing

import filelock
import pytest

from pid_trt.engines.build import make_sidecar
from pid_trt.engines.detect import GpuInfo
from pid_trt.engines.plan import make_plan
from pid_trt.engines.store import EngineStore, canonical_names, check_compatible, engine_name, find_engine
from pid_trt.errors import ConfigError
from pid_trt.sampler import t_lists
from tests.engines.manifest import flux2_manifest, write_onnx_dir

TRT = "10.13.0.35"
H100 = GpuInfo("NVIDIA H100 80GB HBM3", "9.0")


@pytest.fixture
def built(tmp_path):
    """A published flux2 engine (engine bytes stand in for TensorRT's output) and its ONNX manifest."""
    manifest = flux2_manifest()
    onnx_dir = write_onnx_dir(tmp_path / "onnx", manifest)
    plan = make_plan(backbone="flux2", ckpt="2kto4k", precision=None, onnx_dir=onnx_dir,
                     engine_dir=tmp_path / "engines")
    name = plan.name(TRT, H100)
    sidecar = make_sidecar(plan, manifest, TRT, H100, plan.timing_cache_path(TRT, H100))
    path = EngineStore(plan.engine_dir).publish(name, {"cond": b"cond-plan", "denoise": b"denoise-plan"}, sidecar)
    return plan, manifest, name, path


def test_engine_name_format():
    assert (engine_name("flux2", "2kto4k_v1pt5", "bf16", "1a2b3c4d", "10.13.0", "9.0", weights="0f1e2d3c")
            == "pid_flux2_2kto4k_v1pt5_bf16_w0f1e2d3c_p1a2b3c4d_trt10.13.0_sm90")
    assert (engine_name("sdxl", "2kto4k", "fp8", "00000000", None, None, weights="RANDOM", fp8="9a8b7c6d")
            == "pid_sdxl_2kto4k_fp8_wRANDOM_q9a8b7c6d_p00000000_trt<unknown>_sm<unknown>")
    assert "_w<unknown>_q<unknown>_" in engine_name("sdxl", "2kto4k", "fp8", "00000000", None, None, weights=None)
    assert canonical_names("zimage", "2kto4k") == ("flux", "2kto4k_v1pt5")


def test_sidecar_round_trip(built):
    plan, manifest, name, path = built
    assert path == plan.engine_dir / f"{name}.json"
    assert name.startswith(f"pid_flux2_2kto4k_v1pt5_bf16_wRANDOM_p{plan.profile_hash}_trt{TRT}_sm90")
    assert sidecar_weights(path) == ("RANDOM", manifest["weights"])
    sidecar = json.loads(path.read_text())
    assert sidecar["format"] == "pid-trt-engine" and sidecar["format_version"] == 1 and sidecar["name"] == name
    assert sidecar["sampler"]["t_lists"] == {str(n): t for n, t in t_lists().items()}
    assert sidecar["weights_sha256"] == manifest["weights"]["sha256"]
    assert sidecar["gpu"] == {"name": H100.name, "compute_capability": "9.0"} and sidecar["tensorrt_version"] == TRT
    assert sidecar["profiles"] == [p.to_json() for p in plan.profiles]
    assert sidecar["build_flags"]["strongly_typed"] is True
    assert sidecar["fp8"] is None  # a bf16 export: no FP8 choices to record
    for graph, blob in (("cond", b"cond-plan"), ("denoise", b"denoise-plan")):
        spec = sidecar["engines"][graph]
        assert (plan.engine_dir / spec["file"]).read_bytes() == blob
        assert spec["sha256"] == hashlib.sha256(blob).hexdigest()
        assert spec["onnx_sha256"] == manifest["graphs"][graph]["sha256"]
        assert [s["name"] for s in spec["inputs"]] == [s["name"] for s in manifest["graphs"][graph]["inputs"]]
        assert all(set(s) == {"name", "dtype", "shape"} for s in spec["inputs"] + spec["outputs"])
    assert EngineStore(plan.engine_dir).read_sidecar(name) == sidecar
    assert check_compatible(sidecar, trt_version=TRT, compute_capability="9.0", onnx_manifest=manifest,
                            width=4096, height=3072, batch=1) == []


def sidecar_weights(path):
    sidecar = json.loads(path.read_text())
    return sidecar["weights_id"], sidecar["weights"]


def test_each_compatibility_reason(built):
    _, manifest, name, path = built
    sidecar = json.loads(path.read_text())

    def reasons(**kw):
        args = dict(trt_version=TRT, compute_capability="9.0") | kw
        return check_compatible(sidecar, **args)

    [r] = reasons(trt_version="10.14.1")
    assert "TensorRT 10.13.0.35" in r and "10.14.1" in r
    [r] = reasons(compute_capability="8.9")
    assert "compute capability 9.0 (NVIDIA H100 80GB HBM3)" in r and "8.9" in r
    changed = json.loads(json.dumps(manifest))
    changed["graphs"]["denoise"]["sha256"] = "e" * 64
    [r] = reasons(onnx_manifest=changed)
    assert r.startswith("ONNX changed: denoise")
    changed["weights"]["sha256"] = "f" * 64
    assert reasons(onnx_manifest=changed)[1].startswith("weights changed")
    [r] = reasons(width=8192, height=4096)
    assert "8192x4096 lies outside every profile" in r
    [r] = reasons(width=2048, height=2048, batch=2)
    assert "batch 2" in r
    assert reasons(trt_version=None, compute_capability=None) == []  # unknown here: not checked
    assert len(reasons(trt_version="9.0", compute_capability="8.0", width=64, height=64)) == 3
    assert "this pid-trt reads" in check_compatible({"format": "x"}, trt_version=TRT, compute_capability="9.0")[0]


def test_find_engine_explains_rejections(built):
    plan, manifest, name, _ = built
    found = find_engine(plan.engine_dir, "flux2", "2kto4k", "bf16", trt_version=TRT, compute_capability="9.0",
                        onnx_manifest=manifest, width=4096, height=3072)
    assert found.found and found.sidecar["name"] == name and found.rejected == {}
    assert found.require() == plan.engine_dir / f"{name}.json"

    other = find_engine(plan.engine_dir, "flux2", "2kto4k", "bf16", trt_version="10.14.1", compute_capability="9.0")
    assert not other.found
    assert other.rebuild_reason().startswith("rebuilding because: built with TensorRT 10.13.0.35")
    assert other.explain()[0].startswith(f"{name}: built with TensorRT")
    with pytest.raises(ConfigError, match="no usable TensorRT engine for flux2 2kto4k_v1pt5 bf16") as e:
        other.require()
    assert "\n" not in str(e.value)

    fp8 = find_engine(plan.engine_dir, "flux2", "2kto4k", "fp8", trt_version=TRT, compute_capability="9.0")
    assert not fp8.found and not fp8.rejected
    same_quantization = find_engine(plan.engine_dir, "flux2", "2kto4k", "bf16", trt_version=TRT,
                                    compute_capability="9.0", fp8="0badcafe")
    assert not same_quantization.found and "FP8 quantization unknown, not 0badcafe" in same_quantization.rejected[name]
    missing = plan.engine_dir / f"{name}.denoise.engine"
    missing.unlink()
    gone = find_engine(plan.engine_dir, "flux2", "2kto4k", "bf16", trt_version=TRT, compute_capability="9.0")
    assert gone.rejected == {name: [f"missing {missing.name}"]}


def test_find_engine_prefers_an_exact_static_profile(tmp_path):
    manifest = flux2_manifest()
    onnx_dir = write_onnx_dir(tmp_path / "onnx", manifest)
    store = EngineStore(tmp_path / "engines")
    names = {}
    for label, kw in (("dynamic", {"dynamic": True}), ("static", {"shapes": [(4096, 3072)]})):
        plan = make_plan(backbone="flux2", ckpt="2kto4k", precision=None, onnx_dir=onnx_dir,
                         engine_dir=store.root, **kw)
        names[label] = plan.name(TRT, H100)
        store.publish(names[label], {"cond": b"c", "denoise": b"d"}, make_sidecar(plan, manifest, TRT, H100, None))
    kw = dict(trt_version=TRT, compute_capability="9.0")
    hit = find_engine(store.root, "flux2", "2kto4k", "bf16", width=4096, height=3072, **kw)
    assert hit.sidecar["name"] == names["static"]
    hit = find_engine(store.root, "flux2", "2kto4k", "bf16", width=2048, height=2048, **kw)
    assert hit.sidecar["name"] == names["dynamic"]
    assert "2048x2048 lies outside every profile" in hit.rejected[names["static"]][0]


def test_interrupted_write_leaves_an_unfinished_engine(built):
    plan, manifest, name, path = built
    store = EngineStore(plan.engine_dir)
    stale = plan.engine_dir / f".{name}.cond.engine.x1y2.tmp"  # what a killed writer leaves
    stale.write_bytes(b"half")
    broken = make_sidecar(plan, manifest, TRT, H100, None) | {"not_json": object()}
    with pytest.raises(TypeError):
        store.publish(name, {"cond": b"new-cond", "denoise": b"new-denoise"}, broken)
    assert not path.exists()  # the old sidecar no longer vouches for the replaced engine files
    assert (plan.engine_dir / f"{name}.cond.engine").read_bytes() == b"new-cond"
    assert not list(plan.engine_dir.glob("*.tmp")) and not list(plan.engine_dir.glob(".*.tmp"))
    [item] = store.scan()
    assert item.sidecar is None and item.status == "unfinished: engine file without sidecar"
    lookup = find_engine(plan.engine_dir, "flux2", "2kto4k", "bf16", trt_version=TRT, compute_capability="9.0")
    assert lookup.rebuild_reason() == "rebuilding because: unfinished: engine file without sidecar"


def _publish_in_process(root: str, name: str, tag: str, start) -> None:
    blob = tag.encode() * (8 << 20)  # 8 MiB per engine: long enough writes for the two writers to overlap
    sidecar = {"writer": tag, "engines": {"cond": {}, "denoise": {}}}
    start.wait()
    EngineStore(root).publish(name, {"cond": blob, "denoise": blob}, sidecar)


def _hold_lock(root: str, name: str, held, release) -> None:
    with EngineStore(root).lock(name):
        held.set()
        release.wait(30)


@pytest.mark.slow
def test_two_processes_publishing_the_same_engine(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=_publish_in_process, args=(str(tmp_path), "pid_same", tag, start)) for tag in "AB"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    sidecar = json.loads((tmp_path / "pid_same.json").read_text())
    for graph in ("cond", "denoise"):
        data = (tmp_path / f"pid_same.{graph}.engine").read_bytes()
        assert data == sidecar["writer"].encode() * (8 << 20)  # both files from the writer the sidecar names
        assert hashlib.sha256(data).hexdigest() == sidecar["engines"][graph]["sha256"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pid_same.cond.engine", "pid_same.denoise.engine",
                                                          "pid_same.json", "pid_same.lock"]


@pytest.mark.slow
def test_the_lock_excludes_another_process(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    held, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path), "pid_x", held, release))
    holder.start()
    try:
        assert held.wait(30)
        with pytest.raises(filelock.Timeout):
            EngineStore(tmp_path).lock("pid_x").acquire(timeout=0.2)
    finally:
        release.set()
        holder.join(30)
    with EngineStore(tmp_path).lock("pid_x").acquire(timeout=5):
        pass


def test_scan_reports_unreadable_and_foreign_files(tmp_path):
    (tmp_path / "pid_bad.json").write_text("{not json")
    (tmp_path / "notes.json").write_text("[1, 2]")  # not ours: ignored
    [item] = EngineStore(tmp_path).scan()
    assert item.name == "pid_bad" and item.status.startswith("unreadable sidecar")
    assert EngineStore(tmp_path / "nowhere").scan() == []


def test_publish_fills_names_without_touching_the_callers_sidecar(tmp_path):
    sidecar = {"engines": {"cond": {"onnx_sha256": "x"}}}
    EngineStore(tmp_path).publish("pid_n", {"cond": b"abc"}, sidecar)
    assert sidecar == {"engines": {"cond": {"onnx_sha256": "x"}}}
    written = json.loads((tmp_path / "pid_n.json").read_text())
    assert written["name"] == "pid_n" and written["engines"]["cond"]["file"] == "pid_n.cond.engine"
    assert (tmp_path / written["engines"]["cond"]["file"]).read_bytes() == b"abc"


def test_check_compatible_reads_the_shared_sidecar_fixture():
    from tests.conftest import data_file

    sidecar = json.loads(data_file("sidecar", "pid_tiny_fixture.json").read_text())
    kw = dict(trt_version="10.13.0", compute_capability="9.0")
    assert check_compatible(sidecar, width=512, height=512, batch=1, **kw) == []
    assert check_compatible(sidecar, width=256, height=512, batch=2, **kw) == []
    [r] = check_compatible(sidecar, width=2048, height=2048, **kw)
    assert "outside every profile" in r

"""Tests that start Ray run inside private network and PID namespaces made for them.

Ray's processes talk over the machine's own address and probe a public DNS server to find it, even when told
to use 127.0.0.1. Inside `unshare --net` with loopback brought up, loopback is the only interface, so no test
traffic can leave the machine; the PID namespace ends every process the tests started (Ray's included) when
the run ends, also after a timeout. Such a test module calls `run_in_private_network(__file__)` from a single
outer test; the module's real tests are defined only inside the namespace (`in_private_network()`).
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

NETNS_ENV = "PID_TRT_TEST_PRIVATE_NETWORK"
ROOT = pathlib.Path(__file__).resolve().parents[2]
UNSHARE = ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--kill-child"]


def in_private_network() -> bool:
    return os.environ.get(NETNS_ENV) == "1"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI runs as root with util-linux unshare and iproute2)")
    pytest.skip(reason)


def run_in_private_network(test_file: str, timeout: float) -> None:
    """Run pytest on `test_file` inside fresh network + PID namespaces (loopback only); fail with its output."""
    probe = subprocess.run([*UNSHARE, "sh", "-c", "ip link set lo up"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        _unavailable(f"cannot make a private network namespace (needs root, unshare, ip): {probe.stderr.strip()}")
    env = {**os.environ, NETNS_ENV: "1", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    cmd = [*UNSHARE, "sh", "-c", 'ip link set lo up && exec "$@"', "sh", sys.executable, "-m", "pytest", test_file,
           "-v", "-s", "-rfE", "-p", "no:cacheprovider", "-p", "no:xdist", "-o", "addopts=", f"--timeout={int(timeout)}"]
    try:
        run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:  # unshare is killed; --kill-child ends the namespace with it
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        pytest.fail(f"{test_file} did not finish within {timeout:.0f} s:\n{out[-6000:]}")
    print(run.stdout[-6000:])
    assert run.returncode == 0, f"{test_file} failed in its private network:\n{run.stdout[-8000:]}\n{run.stderr[-2000:]}"

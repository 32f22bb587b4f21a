"""Loaders for the golden cases copied into tests/data (upstream's own outputs on tiny random nets)."""
from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

import pid_trt
from tests.conftest import data_file

NET_CASES = ["case_a_flux_v1pt5_square", "case_c_sdxl_v1_4ch", "case_e_siglip_v1_sr8"]


def load_tensors(*parts: str) -> dict[str, torch.Tensor]:
    # clone: safetensors may hand out views at 8-byte offsets, which shifts CPU GEMM results at the 1e-5 level
    return {k: v.clone() for k, v in load_file(str(data_file(*parts))).items()}


def case_config(case: str) -> dict:
    return json.loads(data_file("net", f"{case}.json").read_text())["tiny_config"]


def golden_net(case: str) -> pid_trt.PiDNet:
    net = pid_trt.PiDNet.from_config(case_config(case))
    weights = load_tensors("net", f"{case}_weights.safetensors")
    net.load_state_dict({k.removeprefix("net."): v for k, v in weights.items()}, strict=True)
    return net.eval()

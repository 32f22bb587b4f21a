"""Official checkpoint loading: `model_ema_bf16.pth` (torch pickle of tensors) or `.safetensors`.

Keys carry the `net.` prefix; EMA/teacher/discriminator copies (`net_ema.`, `fake_score.`, `discriminator.`)
are ignored. Keys and shapes are checked against the requested net on the meta device before any
full-size allocation, so a wrong file fails in milliseconds with a message naming the right net.
"""
from __future__ import annotations

import hashlib
import pathlib
from collections.abc import Mapping
from typing import Any

import torch

from pid_trt.config import NET_DEFINITIONS, match_net_definition
from pid_trt.errors import CheckpointError
from pid_trt.integrity import remembered
from pid_trt.model import PiDNet
from pid_trt.registry import experiments_for

_IGNORED_PREFIXES = ("net_ema.", "fake_score.", "discriminator.")


def read_tensors(path: str | pathlib.Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint file, memory-mapped where the format allows (no copy of the data)."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist")
    if p.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {p} is empty")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(p))
        obj = torch.load(str(p), map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # every parser error means the same thing to the user
        kind = "safetensors" if p.suffix == ".safetensors" else "torch"
        raise CheckpointError(f"{p} is not a readable {kind} checkpoint (truncated or not a checkpoint?): "
                              f"{str(e).splitlines()[0][:160] if str(e) else type(e).__name__}") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):  # training checkpoints nest the state dict
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{p} does not hold a flat dict of tensors (found {type(obj).__name__})")
    return obj


def net_state_dict(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip `net.` and drop the copies upstream's loader ignores."""
    out = {}
    for k, v in tensors.items():
        if k.startswith(_IGNORED_PREFIXES):
            continue
        out[k[4:] if k.startswith("net.") else k] = v
    if not out:
        raise CheckpointError("the checkpoint holds no `net.` tensors")
    return out


def _expected_shapes(net_config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in PiDNet(net_config).state_dict().items()}


def _mismatches(state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]]) -> list[str]:
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [f"{k} has shape {list(state[k].shape)}, expected {list(s)}"
                 for k, s in expected.items() if k in state and tuple(state[k].shape) != s]
    return problems


def identify(state: dict[str, torch.Tensor]) -> str | None:
    """The official net definition whose keys and shapes the state dict has exactly."""
    for net in NET_DEFINITIONS.values():
        if not _mismatches(state, _expected_shapes(net.config)):
            return net.id
    return None


def _suggestion(net_id: str) -> str:
    options = [f"--backbone {e.backbone} --ckpt {e.ckpt}" for e in experiments_for(net_id)]
    return f"the file matches net {net_id} ({' or '.join(options)})" if options else f"the file matches net {net_id}"


def check_state_dict(state: dict[str, torch.Tensor], net_config: Mapping[str, Any],
                     source: str = "checkpoint") -> None:
    problems = _mismatches(state, _expected_shapes(net_config))
    if not problems:
        return
    found = identify(state)
    hint = f"; {_suggestion(found)}" if found else ""
    shown = ", ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
    wanted = match_net_definition(net_config)
    raise CheckpointError(f"{source} does not fit net {wanted or 'from the given config'}: {shown}{hint}")


def check_finite(state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> bool:
    """CheckpointError naming the first tensor that holds NaN or Inf: such weights cannot decode."""
    for name, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{source}: tensor {name} holds NaN or Inf values, so these weights cannot "
                                  "decode (a damaged or diverged checkpoint)")
    return True


def load_net(path: str | pathlib.Path, net_config: Mapping[str, Any], device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32) -> PiDNet:
    """Build the net for `net_config` and load the checkpoint strictly (weights become `dtype`, fp32 by default).

    Keys and shapes must match the net, and every tensor must be finite (checked once per file version)."""
    state = net_state_dict(read_tensors(path))
    check_state_dict(state, net_config, source=str(path))
    remembered(path, "finite_tensors", lambda: check_finite(state, str(path)))
    with torch.device("meta"):
        net = PiDNet(net_config)
    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    net.load_state_dict(state, strict=True, assign=True)
    return net.eval()


def weights_digest(net: PiDNet) -> str:
    """sha256 over the net's parameter names and fp32 values: the weights' identity, whatever file they came from."""
    h = hashlib.sha256()
    for name, p in sorted(net.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def inspect_checkpoint(path: str | pathlib.Path) -> dict[str, Any]:
    """Summary of a checkpoint file: matching net definition, tensor count, dtypes, parameter count."""
    tensors = read_tensors(path)
    state = net_state_dict(tensors)
    net_id = identify(state)
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in state.values()})
    return {
        "file": str(path),
        "net_definition": net_id,
        "checkpoints": [f"{e.backbone}/{e.ckpt}" for e in experiments_for(net_id)] if net_id else [],
        "tensors": len(state),
        "ignored_tensors": len(tensors) - len(state),
        "dtypes": dtypes,
        "parameters": sum(v.numel() for v in state.values()),
        "non_finite_tensors": [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()],
    }

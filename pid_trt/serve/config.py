"""ServeConfig: everything a PiD server is made from: the model source, batching limits and replica resources.

A pydantic model so that `serve run pid_trt.serve:app key=value ...` and KubeRay `args:` are validated
the same way as `pid-trt serve` flags; unknown keys are errors.
"""
from __future__ import annotations

import pathlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pid_trt.config import EXPORT_PRECISIONS, parse_size
from pid_trt.errors import PiDInputError
from pid_trt.serve.protocol import DEFAULT_MAX_BODY_BYTES


class ServeConfig(BaseModel):
    """The model to serve (exactly one of engine_dir, onnx_dir, checkpoint) and how to serve it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    engine_dir: str | None = None
    onnx_dir: str | None = None
    checkpoint: str | None = None
    backbone: str | None = None
    ckpt: str | None = None
    precision: Literal[EXPORT_PRECISIONS] = "fp32"
    device: str | None = None  # default: cuda when the replica has a GPU, else cpu
    cuda_graph: bool = True
    text_encoder: str | None = None  # local Gemma-2-2b-it directory: enables the `prompt` field
    text_cache_dir: str | None = None

    max_batch_size: int = Field(8, ge=1)  # images per decode call (and per request)
    batch_wait_ms: float = Field(10.0, ge=0)  # how long a batch waits to fill after its first request
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1024)
    max_size: tuple[int, int] = (4096, 4096)  # largest W×H output without TensorRT (engines: their profiles)

    replicas: int | Literal["auto"] = 1
    autoscaling: dict[str, Any] | None = None  # Ray Serve autoscaling_config, passed through
    gpus_per_replica: float | None = Field(None, ge=0)  # default: 1 for engines or when CUDA is visible, else 0
    cpus_per_replica: float = Field(1.0, ge=0)
    max_ongoing_requests: int | None = Field(None, ge=1)  # default: 2 × max_batch_size (one batch runs, one fills)
    drain_timeout_s: float = Field(30.0, ge=0)  # how long a stopping replica finishes in-flight requests

    @model_validator(mode="after")
    def _one_source(self) -> ServeConfig:
        sources = [s for s in (self.engine_dir, self.onnx_dir, self.checkpoint) if s is not None]
        if len(sources) != 1:
            raise ValueError("give exactly one of engine_dir, onnx_dir or checkpoint")
        if self.checkpoint is not None and self.backbone is None:
            raise ValueError("a checkpoint needs backbone (and ckpt) to know its net")
        if self.autoscaling is not None and self.replicas not in (1, "auto"):
            raise ValueError("give replicas or autoscaling, not both")
        return self

    @field_validator("max_size", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        return parse_size(value) if isinstance(value, str) else value

    @classmethod
    def parse(cls, args: ServeConfig | dict[str, Any] | None = None, **overrides: Any) -> ServeConfig:
        """A config from another config, a dict (Ray Serve builder args) and/or keywords; one-line errors."""
        base = args.model_dump(exclude_unset=True) if isinstance(args, ServeConfig) else dict(args or {})
        try:
            return cls.model_validate(base | overrides)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            message = first["msg"].removeprefix("Value error, ")
            raise PiDInputError(f"serve config: {where + ': ' if where else ''}{message}") from None

    @property
    def source(self) -> pathlib.Path:
        return pathlib.Path(next(s for s in (self.engine_dir, self.onnx_dir, self.checkpoint) if s is not None))

    def gpus(self) -> float:
        """GPUs per replica: as given, else 1 for TensorRT engines or when this process sees CUDA, else 0."""
        if self.gpus_per_replica is not None:
            return self.gpus_per_replica
        import torch

        return 1.0 if self.engine_dir is not None or torch.cuda.is_available() else 0.0

    def replica_device(self) -> str:
        return self.device or ("cuda" if self.gpus() > 0 else "cpu")

    def ongoing_requests(self) -> int:
        return self.max_ongoing_requests or 2 * self.max_batch_size

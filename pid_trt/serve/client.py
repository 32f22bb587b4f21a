"""Client for a PiD server (`pid-trt serve`): decode over HTTP, retrying when the connection or a replica is lost.

Decoding is deterministic (fixed seeds), so a request may be sent again safely: connection errors and the
statuses a restarting or overloaded server answers with (500, 502, 503, 504) are retried with exponential
backoff; a refused request (4xx) is not. Uses urllib3 (a dependency of Ray and requests).
"""
from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import torch
import urllib3

from pid_trt.errors import PiDError
from pid_trt.serve.protocol import API_VERSION, Decoded, decode_images

RETRY_STATUSES = (500, 502, 503, 504)


class ServerError(PiDError):
    """The server refused or failed a request (after retries); `status` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


class Client:
    """`Client("http://127.0.0.1:8000").decode(lq_latent, caption_embedding, seed=0).images` → uint8 [B,3,H,W]."""

    def __init__(self, url: str = "http://127.0.0.1:8000", *, retries: int = 10, backoff: float = 0.5,
                 backoff_max: float = 8.0, timeout: float = 600.0, connect_timeout: float = 10.0):
        base = url.rstrip("/")
        self.url = base.removesuffix(f"/{API_VERSION}")
        retry = urllib3.Retry(total=retries, connect=retries, read=retries, status=retries, other=retries,
                              allowed_methods=None, status_forcelist=RETRY_STATUSES, backoff_factor=backoff,
                              backoff_max=backoff_max, raise_on_status=False)
        # one pool of up to 16 kept-alive connections, shared safely by threads that use this client
        self._http = urllib3.PoolManager(retries=retry, maxsize=16,
                                         timeout=urllib3.Timeout(connect=connect_timeout, read=timeout))

    def _request(self, method: str, route: str, body: bytes | None = None, headers: dict | None = None):
        url = f"{self.url}/{API_VERSION}/{route}"
        try:
            response = self._http.request(method, url, body=body, headers=headers)
        except urllib3.exceptions.HTTPError as e:  # retries exhausted without an answer
            reason = getattr(e, "reason", None) or e
            raise ServerError(f"no answer from {url}: {' '.join(str(reason).split())[:200]}") from None
        if response.status >= 400:
            try:
                message = json.loads(response.data)["error"]
            except (ValueError, KeyError, TypeError):
                message = response.data[:200].decode(errors="replace").strip() or response.reason
            raise ServerError(f"{method} {url} → {response.status}: {message}", response.status)
        return response

    def health(self) -> dict[str, Any]:
        """`{"status": "ready"}` once a replica has loaded and warmed its decoder (raises ServerError before)."""
        return json.loads(self._request("GET", "health").data)

    def info(self) -> dict[str, Any]:
        """The served model, the sizes it accepts, the batching limits and the answering replica's counters."""
        return json.loads(self._request("GET", "info").data)

    def decode(self, lq_latent: torch.Tensor, caption_embedding: torch.Tensor | None = None,
               degrade_sigma: float | torch.Tensor = 0.0, *, prompt: str | list[str] | None = None,
               seed: int = 0, steps: int | None = None) -> Decoded:
        """Decode latents [B,C,h,w] (or [C,h,w]) with a caption embedding [1 or B, L, D] or prompts (when the
        server has a text encoder). Image i uses seed `seed + i`, exactly like `pid-trt decode --seed`."""
        z = lq_latent.detach().cpu()
        z = z[None] if z.dim() == 3 else z
        sigma = torch.as_tensor(degrade_sigma, dtype=torch.float32).reshape(-1).expand(z.shape[0]).contiguous()
        query = {"seed": seed, "format": "safetensors", **({"steps": steps} if steps is not None else {})}
        if prompt is None:
            from safetensors.torch import save

            tensors = {"lq_latent": z.contiguous(), "degrade_sigma": sigma}
            if caption_embedding is not None:
                tensors["caption_embedding"] = caption_embedding.detach().cpu().contiguous()
            body = save(tensors)
            content_type = "application/octet-stream"
        else:
            body = json.dumps({"lq_latent": z.tolist(), "degrade_sigma": sigma.tolist(), "prompt": prompt}).encode()
            content_type = "application/json"
        response = self._request("POST", f"decode?{urlencode(query)}", body=body,
                                 headers={"Content-Type": content_type})
        images, seeds = decode_images(response.data)
        return Decoded(images, seeds, int(response.headers.get("X-PiD-Batch-Size", 0)))

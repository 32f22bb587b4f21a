"""Tiny random diffusers pipelines → from_pipeline_output → PiD decode, end to end (no downloads)."""
import pytest
import torch

from pid_trt import latents as L
from pid_trt.runtime import PiDDecoder
from pid_trt.tiny import tiny_net
from tests.tiny_pipelines import BATCH, HEIGHT, WIDTH, run_tiny

# tiny PiD nets with the structure each backbone's checkpoint uses
STRUCTURE = {"flux": "V15-16", "sd3": "V1-16", "sdxl": "V1-XL"}


@pytest.mark.parametrize("backbone", sorted(STRUCTURE))
def test_pipeline_latents_decode(backbone):
    pipe, final, captured = run_tiny(backbone, torch.float32)
    dec = PiDDecoder.from_net(tiny_net(STRUCTURE[backbone]))
    y = torch.randn(BATCH, 8, 32)
    for step in (None, 2):
        latent = final if step is None else captured[step]
        lq, sigma = L.from_pipeline_output(backbone, latent, pipe, step=step, height=HEIGHT, width=WIDTH)
        assert (sigma > 0).all() == (step is not None)
        images = dec.decode(lq, y, sigma, seed=0, output="uint8")
        # PiD's output is 4× the LDM image (latent × 8 × SR 4)
        assert images.shape == (BATCH, 3, HEIGHT * 4, WIDTH * 4) and images.dtype == torch.uint8
        assert images.float().std() > 0

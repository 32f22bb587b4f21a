"""End-to-end workflows around the decoder: text → LDM → PiD (`generate`) and image → VAE → PiD (`reconstruct`)."""
from pid_trt.workflows.generate import generate, load_pipeline, run_ldm
from pid_trt.workflows.reconstruct import Sample, read_manifest, reconstruct

__all__ = ["Sample", "generate", "load_pipeline", "read_manifest", "reconstruct", "run_ldm"]

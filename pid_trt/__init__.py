"""pid-trt: export, build and run NVIDIA's PiD pixel diffusion decoder."""
from pid_trt.errors import CheckpointError, ConfigError, PiDError, PiDInputError
from pid_trt.model import PiDNet
from pid_trt.runtime import PiDDecoder
from pid_trt.sampler import sample, t_list, t_lists, to_uint8

__version__ = "0.1.0"
__all__ = ["PiDNet", "PiDDecoder", "sample", "to_uint8", "t_list", "t_lists", "PiDError", "PiDInputError", "CheckpointError",
           "ConfigError", "__version__"]

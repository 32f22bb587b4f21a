"""TensorRT engines: optimization profiles, the engine store, build planning, detection and the build itself.

Only `pid_trt.engines.detect.load_tensorrt` imports TensorRT (lazily); everything else works without it.
"""
from pid_trt.engines.profiles import Profile, input_shapes, parse_batch, plan_profiles, profile_set_hash
from pid_trt.engines.store import EngineLookup, EngineStore, check_compatible, engine_name, find_engine

__all__ = ["Profile", "input_shapes", "parse_batch", "plan_profiles", "profile_set_hash",
           "EngineLookup", "EngineStore", "check_compatible", "engine_name", "find_engine"]

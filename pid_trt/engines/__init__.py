"""TensorRT engines: optimization profiles, the engine store, and the builder behind `pid-trt build`.

Only `pid_trt.engines.trt` touches TensorRT (lazily); everything else works without it.
"""
from pid_trt.engines.profiles import Profile, input_shapes, parse_batch, parse_size, plan_profiles, profile_set_hash
from pid_trt.engines.store import EngineLookup, EngineStore, check_compatible, engine_name, find_engine

__all__ = ["Profile", "input_shapes", "parse_batch", "parse_size", "plan_profiles", "profile_set_hash",
           "EngineLookup", "EngineStore", "check_compatible", "engine_name", "find_engine"]

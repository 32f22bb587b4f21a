"""The Ray Serve deployment's options, built without starting Ray (tests/serve/test_server_e2e.py runs it)."""
import inspect

import pytest

pytest.importorskip("ray.serve", reason="pid_trt.serve needs Ray Serve: pip install 'pid-trt[serve]'")

from pid_trt.serve import app
from pid_trt.serve.config import ServeConfig
from pid_trt.serve.deployment import deployment


def test_one_gpu_per_replica_for_engines_and_replica_count():
    d = deployment(ServeConfig(engine_dir="engines", replicas=4, max_batch_size=8))
    assert d.ray_actor_options == {"num_gpus": 1.0, "num_cpus": 1.0}
    assert d.num_replicas == 4 and d.max_ongoing_requests == 16


def test_autoscaling_config_is_passed_through():
    scaling = {"min_replicas": 1, "max_replicas": 8, "target_ongoing_requests": 4}
    d = deployment(ServeConfig(onnx_dir="onnx", autoscaling=scaling, cpus_per_replica=2))
    assert d.ray_actor_options == {"num_gpus": 0.0, "num_cpus": 2.0}
    # Ray keeps the autoscaling settings in its private deployment config; read them where Ray does
    assert {k: getattr(d._deployment_config.autoscaling_config, k) for k in scaling} == scaling


def test_app_is_a_serve_application_builder():
    """`serve run pid_trt.serve:app onnx_dir=... max_batch_size=4` calls app with one dict of strings."""
    from ray.serve.deployment import Application

    assert len(inspect.signature(app).parameters) == 1
    assert isinstance(app({"onnx_dir": "onnx", "max_batch_size": "4"}), Application)

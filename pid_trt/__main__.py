"""`python -m pid_trt` (what torchrun runs): the command line, which lives on top in pid_trt.cli."""
import runpy

runpy.run_module("pid_trt.cli", run_name="__main__", alter_sys=True)

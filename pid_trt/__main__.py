"""`python -m pid_trt`: the `pid-trt` command line (also what torchrun runs)."""
from pid_trt.cli import main

main()

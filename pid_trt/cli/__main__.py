"""`python -m pid_trt.cli`: the `pid-trt` command line."""
from pid_trt.cli import main

main()

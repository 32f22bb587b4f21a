from pid_trt.cli import main

main()

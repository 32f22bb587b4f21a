/* Reads the 4-step t-list of the sidecar given as argv[1] through the installed library. */
#include <stdio.h>

#include <pid_trt.h>

int main(int argc, char** argv) {
    pidtrt_sidecar* sidecar = NULL;
    float t[8];
    int32_t count = 0;
    if (argc != 2) return 2;
    if (pidtrt_sidecar_open(argv[1], &sidecar) != PIDTRT_STATUS_OK ||
        pidtrt_sidecar_t_list(sidecar, 4, t, 8, &count) != PIDTRT_STATUS_OK) {
        fprintf(stderr, "error: %s\n", pidtrt_last_error());
        pidtrt_sidecar_close(sidecar);
        return 1;
    }
    pidtrt_sidecar_close(sidecar);
    printf("pidtrt %s (TensorRT: %d): t-list(4) = %g %g %g %g %g\n", pidtrt_version(), pidtrt_has_tensorrt(), t[0],
           t[1], t[2], t[3], t[4]);
    return count == 5 && t[0] == 0.999f && t[4] == 0.0f ? 0 : 1;
}

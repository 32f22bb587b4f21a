/* The public header must compile as strict C99 (-std=c99 -pedantic -Werror) and link. */
#include "pid_trt.h"

#include <stdio.h>

int main(void) {
    pidtrt_decode_params params;
    pidtrt_decoder_options options;
    pidtrt_sidecar* sidecar = NULL;
    pidtrt_decode_params_init(&params);
    pidtrt_decoder_options_init(&options);
    if (params.batch != 1 || params.output_format != PIDTRT_OUTPUT_F32_NCHW || options.use_cuda_graph != 1) return 1;
    if (pidtrt_sidecar_open(NULL, &sidecar) != PIDTRT_STATUS_INVALID_ARGUMENT || sidecar != NULL) return 1;
    printf("pidtrt %s from C99; expected error: %s (%s)\n", pidtrt_version(), pidtrt_last_error(),
           pidtrt_status_name(PIDTRT_STATUS_INVALID_ARGUMENT));
    return 0;
}

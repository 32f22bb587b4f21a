/*
 * pid_trt.h - C API of the pid-trt runtime (PiD pixel-diffusion decoder on TensorRT).
 *
 * Plain C99; usable from C and C++. Every function returns a pidtrt_status; on failure,
 * pidtrt_last_error() returns a readable one-line message for the calling thread. No C++
 * exception ever crosses this boundary.
 *
 * Two groups of functions:
 *   - sidecar queries (pidtrt_sidecar_*): read an engine directory's JSON sidecar, the sampler
 *     schedule and the engine profiles. They need neither a GPU nor TensorRT.
 *   - the decoder (pidtrt_decoder_*): loads the cond and denoise engines and runs the few-step
 *     sampler, the whole decode replayed from one CUDA graph per shape. Without TensorRT in the
 *     build, pidtrt_decoder_create returns PIDTRT_STATUS_UNSUPPORTED.
 *
 * Noise: with no injected noise, draws come from this library's own Philox4x32-10 generator
 * (keyed by the seed, Box-Muller to normals). It is NOT bit-identical to torch's CUDA generator,
 * so outputs match upstream only statistically. For bit-parity runs, draw the noise with torch
 * and pass it in pidtrt_decode_params.noise.
 *
 * Thread safety: the functions are re-entrant; one decoder must not be used by two threads at
 * the same time. Decodes on one decoder are ordered by the library, even on different streams.
 */
#ifndef PID_TRT_H
#define PID_TRT_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#  if defined(PIDTRT_BUILDING_LIBRARY)
#    define PIDTRT_API __declspec(dllexport)
#  else
#    define PIDTRT_API __declspec(dllimport)
#  endif
#else
#  define PIDTRT_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define PIDTRT_VERSION_MAJOR 0
#define PIDTRT_VERSION_MINOR 1
#define PIDTRT_VERSION_PATCH 0

/* Sidecar format_version this runtime reads. */
#define PIDTRT_SIDECAR_FORMAT_VERSION 1

typedef enum pidtrt_status {
    PIDTRT_STATUS_OK = 0,
    PIDTRT_STATUS_INVALID_ARGUMENT = 1, /* a NULL pointer, a bad size, an unknown enum value */
    PIDTRT_STATUS_IO_ERROR = 2,         /* a file could not be read */
    PIDTRT_STATUS_FORMAT_ERROR = 3,     /* the sidecar is malformed or of another format_version */
    PIDTRT_STATUS_NOT_FOUND = 4,        /* no t-list for that step count, no profile for that shape */
    PIDTRT_STATUS_UNSUPPORTED = 5,      /* built without TensorRT, or engines this runtime cannot run (teacher) */
    PIDTRT_STATUS_CUDA_ERROR = 6,
    PIDTRT_STATUS_TENSORRT_ERROR = 7,
    PIDTRT_STATUS_INTERNAL_ERROR = 8
} pidtrt_status;

/* Name of a status code, e.g. "PIDTRT_STATUS_NOT_FOUND". Never NULL. */
PIDTRT_API const char* pidtrt_status_name(pidtrt_status status);

/* Message of the last failed call on this thread ("" if none). Valid until the next call. */
PIDTRT_API const char* pidtrt_last_error(void);

/* "major.minor.patch" of the library actually loaded. */
PIDTRT_API const char* pidtrt_version(void);

/* 1 if the library was built with TensorRT (the decoder works), else 0. */
PIDTRT_API int pidtrt_has_tensorrt(void);

/* ---------------------------------------------------------------------------------------------
 * Sidecar queries (no GPU, no TensorRT)
 * ------------------------------------------------------------------------------------------- */

typedef struct pidtrt_sidecar pidtrt_sidecar;

/* Opens a sidecar: `path` is either the <name>.json file or an engine directory holding exactly
 * one *.json sidecar. PIDTRT_STATUS_UNSUPPORTED for engines of an undistilled teacher checkpoint
 * (sampler kind "teacher"): this runtime implements only the distilled student sampler. */
PIDTRT_API pidtrt_status pidtrt_sidecar_open(const char* path, pidtrt_sidecar** out);
PIDTRT_API void pidtrt_sidecar_close(pidtrt_sidecar* sidecar); /* NULL is a no-op */

/* The engine name ("pid_<backbone>_..."); owned by the sidecar. */
PIDTRT_API pidtrt_status pidtrt_sidecar_name(const pidtrt_sidecar* sidecar, const char** name);

typedef struct pidtrt_latent_info {
    int32_t channels;    /* C of lq_latent [B, C, h, w] */
    int32_t down_factor; /* backbone VAE downsampling */
    int32_t sr_scale;    /* PiD super-resolution factor; output px per latent px = down_factor * sr_scale */
} pidtrt_latent_info;

PIDTRT_API pidtrt_status pidtrt_sidecar_latent(const pidtrt_sidecar* sidecar, pidtrt_latent_info* out);

/* Caption embedding y is [B, max_length, embed_dim] float32. */
PIDTRT_API pidtrt_status pidtrt_sidecar_text(const pidtrt_sidecar* sidecar, int32_t* max_length,
                                             int32_t* embed_dim);

/* sampler.default_steps and sampler.timescale (the net receives float32(t * timescale)). */
PIDTRT_API pidtrt_status pidtrt_sidecar_default_steps(const pidtrt_sidecar* sidecar, int32_t* steps);
PIDTRT_API pidtrt_status pidtrt_sidecar_timescale(const pidtrt_sidecar* sidecar, float* timescale);

/* The step counts the sidecar has t-lists for, ascending; writes min(capacity, n) of them to `out`
 * and n to *count. */
PIDTRT_API pidtrt_status pidtrt_sidecar_step_counts(const pidtrt_sidecar* sidecar, int32_t* out, int32_t capacity,
                                                    int32_t* count);

/* The t-list for `steps` sampler steps (steps + 1 float32 values, from sampler.t_lists). Writes
 * min(capacity, steps + 1) values to `out` (may be NULL with capacity 0) and the full count to
 * *count. PIDTRT_STATUS_NOT_FOUND if the sidecar has no list for `steps`. */
PIDTRT_API pidtrt_status pidtrt_sidecar_t_list(const pidtrt_sidecar* sidecar, int32_t steps, float* out,
                                               int32_t capacity, int32_t* count);

/* The `steps` net timesteps float32(t_c * timescale), one per denoise call; same out/capacity/count
 * convention as pidtrt_sidecar_t_list. */
PIDTRT_API pidtrt_status pidtrt_sidecar_net_timesteps(const pidtrt_sidecar* sidecar, int32_t steps,
                                                      float* out, int32_t capacity, int32_t* count);

/* Number of [B, 3, H, W] noise draws a decode with `steps` steps uses: 1 + (steps with t_n > 0). */
PIDTRT_API pidtrt_status pidtrt_sidecar_noise_draws(const pidtrt_sidecar* sidecar, int32_t steps,
                                                    int32_t* draws);

/* Engine optimization profiles (same order as in the engines). */
typedef struct pidtrt_profile_info {
    const char* name; /* owned by the sidecar */
    int32_t is_static;
    int32_t batch[3];  /* min, opt, max */
    int32_t width[3];  /* output pixels */
    int32_t height[3]; /* output pixels */
} pidtrt_profile_info;

PIDTRT_API pidtrt_status pidtrt_sidecar_profile_count(const pidtrt_sidecar* sidecar, int32_t* count);
PIDTRT_API pidtrt_status pidtrt_sidecar_profile(const pidtrt_sidecar* sidecar, int32_t index,
                                                pidtrt_profile_info* out);

/* Profile used for an output of width x height pixels and `batch` samples: the first static
 * profile that matches exactly, else the first dynamic profile that contains it. Otherwise
 * PIDTRT_STATUS_NOT_FOUND, with an error naming the shape and the available profiles. */
PIDTRT_API pidtrt_status pidtrt_sidecar_select_profile(const pidtrt_sidecar* sidecar, int32_t width,
                                                       int32_t height, int32_t batch, int32_t* index);

/* ---------------------------------------------------------------------------------------------
 * Decoder (needs a GPU and TensorRT)
 * ------------------------------------------------------------------------------------------- */

typedef struct pidtrt_decoder pidtrt_decoder;

typedef struct pidtrt_decoder_options {
    int32_t device;            /* CUDA device ordinal; default 0 */
    int32_t use_cuda_graph;    /* 1 (default): capture each shape once and replay; 0: plain enqueue */
    int32_t max_cached_shapes; /* execution contexts + buffers kept per (batch, W, H); default 4 */
} pidtrt_decoder_options;

/* Fills the defaults above. */
PIDTRT_API void pidtrt_decoder_options_init(pidtrt_decoder_options* options);

/* Loads <engine_dir>/<name>.cond.engine and <name>.denoise.engine as named by the sidecar found in
 * engine_dir (engine_dir may also be the sidecar path). `options` may be NULL. */
PIDTRT_API pidtrt_status pidtrt_decoder_create(const char* engine_dir, const pidtrt_decoder_options* options,
                                               pidtrt_decoder** out);
PIDTRT_API void pidtrt_decoder_destroy(pidtrt_decoder* decoder); /* NULL is a no-op */

/* The decoder's sidecar (owned by the decoder; do not close). */
PIDTRT_API const pidtrt_sidecar* pidtrt_decoder_sidecar(const pidtrt_decoder* decoder);

/* Sets the caption embedding y [batch, max_length, embed_dim] float32 for the following decodes.
 * `y` is a device (or host) pointer; it is copied on `stream` (a cudaStream_t, NULL = default
 * stream) and may be freed once that copy has run. */
PIDTRT_API pidtrt_status pidtrt_decoder_set_caption_embedding(pidtrt_decoder* decoder, const float* y,
                                                              int32_t batch, void* stream);

typedef enum pidtrt_output_format {
    PIDTRT_OUTPUT_F32_NCHW = 0, /* float32 [B, 3, H, W], clamped to [-1, 1] */
    PIDTRT_OUTPUT_U8_NCHW = 1,  /* uint8 [B, 3, H, W], trunc((x + 1) * 127.5) */
    PIDTRT_OUTPUT_U8_NHWC = 2   /* uint8 [B, H, W, 3] interleaved RGB, same values */
} pidtrt_output_format;

typedef enum pidtrt_latent_rounding {
    PIDTRT_LATENT_ROUND_BF16 = 0, /* round lq_latent to bfloat16 first, as upstream's callers do */
    PIDTRT_LATENT_AS_IS = 1       /* feed the float32 latent unchanged */
} pidtrt_latent_rounding;

typedef struct pidtrt_decode_params {
    int32_t batch;  /* B >= 1; must equal the batch of the caption embedding */
    int32_t width;  /* output W in pixels */
    int32_t height; /* output H in pixels */
    int32_t steps;  /* sampler steps; 0 = sampler.default_steps */
    /* lq_latent [B, C, H / (down_factor * sr_scale), W / (down_factor * sr_scale)] float32, device. */
    const float* latent;
    pidtrt_latent_rounding latent_rounding;
    /* degrade sigma per sample (host array of `batch` floats); NULL = 0 for every sample. */
    const float* degrade_sigma;
    /* Philox seed, used when `noise` is NULL. */
    uint64_t seed;
    /* Optional injected noise, device float32 [draws, B, 3, H, W] with draws from
     * pidtrt_sidecar_noise_draws (draw 0 = initial sample, then one per re-noise step). */
    const float* noise;
    /* Output, device memory in `output_format` (see pidtrt_output_format). */
    void* output;
    pidtrt_output_format output_format;
    /* cudaStream_t to run on (NULL = default stream). The call is asynchronous. */
    void* stream;
} pidtrt_decode_params;

/* Fills the defaults: batch 1, steps 0, ROUND_BF16, seed 0, F32_NCHW, NULL pointers. */
PIDTRT_API void pidtrt_decode_params_init(pidtrt_decode_params* params);

/* Runs one decode (cond once, then the sampler). Enqueued on params->stream; synchronize the
 * stream before reading the output. */
PIDTRT_API pidtrt_status pidtrt_decoder_decode(pidtrt_decoder* decoder, const pidtrt_decode_params* params);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* PID_TRT_H */

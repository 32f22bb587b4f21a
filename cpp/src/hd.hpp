// Lets one definition serve the CUDA kernels and the host reference/tests.
#pragma once

#if defined(__CUDACC__)
#define PIDTRT_HD __host__ __device__ __forceinline__
#else
#define PIDTRT_HD inline
#endif

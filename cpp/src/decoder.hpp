// The decoder behind pidtrt_decoder_*: TensorRT engines plus the CUDA-graph sampler.
#pragma once

#include <memory>
#include <string>

#include <cuda_runtime_api.h>

#include "pid_trt.h"
#include "sidecar.hpp"

namespace pidtrt {

class Decoder {
public:
    virtual ~Decoder() = default;
    virtual const Sidecar& sidecar() const = 0;
    virtual void set_caption_embedding(const float* y, int batch, cudaStream_t stream) = 0;
    virtual void decode(const pidtrt_decode_params& params) = 0;
};

// Implemented by decoder_trt.cpp, or by decoder_unavailable.cpp when built without TensorRT.
std::unique_ptr<Decoder> create_decoder(const std::string& engine_dir, const pidtrt_decoder_options& options);
bool built_with_tensorrt();

}  // namespace pidtrt

// Stand-in for decoder_trt.cpp in builds without TensorRT: the sidecar queries still work.
#include "decoder.hpp"
#include "error.hpp"

namespace pidtrt {

std::unique_ptr<Decoder> create_decoder(const std::string&, const pidtrt_decoder_options&) {
    throw Error(PIDTRT_STATUS_UNSUPPORTED,
                "pidtrt was built without TensorRT, so it cannot decode; rebuild with TensorRT "
                "(cmake -DTENSORRT_ROOT=/path/to/TensorRT)");
}

bool built_with_tensorrt() { return false; }

}  // namespace pidtrt

// Internal error type: thrown inside the library, turned into a status + message at the C boundary.
#pragma once

#include <stdexcept>
#include <string>

#include "pid_trt.h"

namespace pidtrt {

class Error : public std::runtime_error {
public:
    Error(pidtrt_status status, const std::string& message) : std::runtime_error(message), status_(status) {}
    pidtrt_status status() const noexcept { return status_; }

private:
    pidtrt_status status_;
};

}  // namespace pidtrt

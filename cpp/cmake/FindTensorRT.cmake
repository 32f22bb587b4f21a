# Finds TensorRT's NvInfer.h and libnvinfer. Hints: -DTENSORRT_ROOT=... or the TENSORRT_ROOT
# environment variable (a TensorRT tar install), else the standard system paths (Debian packages).
# Defines TensorRT_FOUND, TensorRT_VERSION and the imported target TensorRT::nvinfer.
set(_trt_hints ${TENSORRT_ROOT} $ENV{TENSORRT_ROOT})

find_path(TensorRT_INCLUDE_DIR NvInfer.h
  HINTS ${_trt_hints}
  PATH_SUFFIXES include include/x86_64-linux-gnu include/aarch64-linux-gnu
  PATHS /usr/local/TensorRT /opt/tensorrt /usr/local/cuda)
find_library(TensorRT_LIBRARY
  NAMES nvinfer nvinfer_11 nvinfer_10 libnvinfer.so.11 libnvinfer.so.10
  HINTS ${_trt_hints}
  PATH_SUFFIXES lib lib64 lib/x86_64-linux-gnu lib/aarch64-linux-gnu
  PATHS /usr/local/TensorRT /opt/tensorrt /usr/local/cuda)

if(TensorRT_INCLUDE_DIR AND EXISTS "${TensorRT_INCLUDE_DIR}/NvInferVersion.h")
  file(READ "${TensorRT_INCLUDE_DIR}/NvInferVersion.h" _trt_version_header)
  foreach(_part MAJOR MINOR PATCH)
    # Newer headers route NV_TENSORRT_<part> through TRT_<part>_ENTERPRISE.
    if(_trt_version_header MATCHES "#define TRT_${_part}_ENTERPRISE ([0-9]+)")
      set(_trt_${_part} ${CMAKE_MATCH_1})
    elseif(_trt_version_header MATCHES "#define NV_TENSORRT_${_part} ([0-9]+)")
      set(_trt_${_part} ${CMAKE_MATCH_1})
    endif()
  endforeach()
  set(TensorRT_VERSION "${_trt_MAJOR}.${_trt_MINOR}.${_trt_PATCH}")
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(TensorRT
  REQUIRED_VARS TensorRT_LIBRARY TensorRT_INCLUDE_DIR
  VERSION_VAR TensorRT_VERSION)

if(TensorRT_FOUND AND NOT TARGET TensorRT::nvinfer)
  add_library(TensorRT::nvinfer UNKNOWN IMPORTED)
  set_target_properties(TensorRT::nvinfer PROPERTIES
    IMPORTED_LOCATION "${TensorRT_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${TensorRT_INCLUDE_DIR}")
endif()
mark_as_advanced(TensorRT_INCLUDE_DIR TensorRT_LIBRARY)

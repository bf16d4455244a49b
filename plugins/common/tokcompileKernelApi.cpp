/*
 * Host-side helpers of the kernels library (no device code, no TensorRT).
 */
#include "common/tokcompileKernelApi.h"

extern "C" char const* tokcompileKernelErrorString(int32_t code)
{
    return cudaGetErrorString(static_cast<cudaError_t>(code));
}

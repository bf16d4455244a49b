/*
 * tokcompile token-op kernels: what every launcher header shares.
 *
 * Plain C/C++ (no TensorRT, no CUDA device code): the launchers are called from the TensorRT
 * plugins and, through ctypes, from the Python test harness (libtokcompile_kernels.so).
 */
#ifndef TOKCOMPILE_KERNEL_API_H
#define TOKCOMPILE_KERNEL_API_H

#include <cuda_runtime_api.h>
#include <stdint.h>

#if defined(_WIN32)
#define TOKCOMPILE_KERNEL_API __declspec(dllexport)
#else
#define TOKCOMPILE_KERNEL_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C"
{
#endif

    /*
     * Element types a launcher accepts. Deliberately NOT TensorRT's DataType numbering: the kernels
     * library must not depend on TensorRT, and the plugins map their DataType explicitly.
     */
    enum TokcompileDtype
    {
        TOKCOMPILE_FLOAT32 = 0,
        TOKCOMPILE_FLOAT16 = 1,
        TOKCOMPILE_BFLOAT16 = 2,
        TOKCOMPILE_BOOL = 3,  /* one byte, 0 = false, anything else = true */
        TOKCOMPILE_INT32 = 4, /* 0 = false, anything else = true (mask inputs only) */
    };

    /* cudaGetErrorString for the code a launcher returned (for ctypes callers without libcudart). */
    TOKCOMPILE_KERNEL_API char const* tokcompileKernelErrorString(int32_t code);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* TOKCOMPILE_KERNEL_API_H */

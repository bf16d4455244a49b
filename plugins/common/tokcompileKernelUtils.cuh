/*
 * Device helpers shared by the token-op kernels: element conversion, block-wide reductions and
 * scans for ONE thread block per image, and the launch-time shared-memory check.
 *
 * Every reduction here is deterministic: the block result does not depend on warp scheduling,
 * and every thread of the block gets the bitwise-same value (a butterfly warp sum computes the
 * same tree on every lane because floating-point addition is commutative).
 */
#ifndef TOKCOMPILE_KERNEL_UTILS_CUH
#define TOKCOMPILE_KERNEL_UTILS_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace tokcompile
{
namespace kernels
{

constexpr unsigned kFullWarpMask = 0xffffffffu;
constexpr int kWarpSize = 32;

// Element conversion. half/bfloat16 -> float is exact, so (double) of the result is exact too.
__device__ __forceinline__ float toFloat(float v)
{
    return v;
}
__device__ __forceinline__ float toFloat(__half v)
{
    return __half2float(v);
}
__device__ __forceinline__ float toFloat(__nv_bfloat16 v)
{
    return __bfloat162float(v);
}

template <typename T>
__device__ __forceinline__ T fromFloat(float v);
template <>
__device__ __forceinline__ float fromFloat<float>(float v)
{
    return v;
}
// Round to nearest even, as torch's .to(torch.float16 / torch.bfloat16) does.
template <>
__device__ __forceinline__ __half fromFloat<__half>(float v)
{
    return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 fromFloat<__nv_bfloat16>(float v)
{
    return __float2bfloat16_rn(v);
}

struct SumOp
{
    template <typename T>
    __device__ __forceinline__ T operator()(T a, T b) const
    {
        return a + b;
    }
};

struct MinOp
{
    __device__ __forceinline__ float operator()(float a, float b) const
    {
        return fminf(a, b);
    }
};

// Butterfly all-reduce inside one warp; every lane must call it (warp-uniform control flow).
template <typename T, typename Op>
__device__ __forceinline__ T warpAllReduce(T v, Op op)
{
    for (int offset = kWarpSize / 2; offset > 0; offset >>= 1)
    {
        v = op(v, __shfl_xor_sync(kFullWarpMask, v, offset));
    }
    return v;
}

// All-reduce over a block of kThreads threads. scratch: at least kThreads / 32 elements of
// shared memory. Every thread folds the per-warp partials in the same order, so all threads
// return the same value. Ends with a barrier, so scratch may be reused right after.
template <int kThreads, typename T, typename Op>
__device__ __forceinline__ T blockAllReduce(T v, T* scratch, Op op, T identity)
{
    static_assert(kThreads % kWarpSize == 0, "block size must be a multiple of the warp size");
    constexpr int kWarps = kThreads / kWarpSize;
    int const lane = threadIdx.x % kWarpSize;
    int const warp = threadIdx.x / kWarpSize;
    v = warpAllReduce(v, op);
    if (lane == 0)
    {
        scratch[warp] = v;
    }
    __syncthreads();
    T result = identity;
    for (int w = 0; w < kWarps; ++w)
    {
        result = op(result, scratch[w]);
    }
    __syncthreads();
    return result;
}

// In-place inclusive prefix sum of data[0, n) in shared memory by a block of kThreads threads.
// Thread t scans the contiguous chunk [t * chunk, (t + 1) * chunk) sequentially, then adds the
// sum of the chunks before it. scratch: kThreads / 32 elements of shared memory. Starts and ends
// with a barrier.
template <int kThreads, typename T>
__device__ void blockInclusiveScan(T* data, int n, T* scratch)
{
    static_assert(kThreads % kWarpSize == 0, "block size must be a multiple of the warp size");
    int const tid = threadIdx.x;
    int const lane = tid % kWarpSize;
    int const warp = tid / kWarpSize;
    int const chunk = (n + kThreads - 1) / kThreads;
    int const begin = min(tid * chunk, n);
    int const end = min(begin + chunk, n);

    __syncthreads();
    T run = T(0);
    for (int i = begin; i < end; ++i)
    {
        run += data[i];
        data[i] = run;
    }
    // Inclusive scan of the per-thread totals: first inside each warp, then over the warps.
    T incl = run;
    for (int offset = 1; offset < kWarpSize; offset <<= 1)
    {
        T const other = __shfl_up_sync(kFullWarpMask, incl, offset);
        if (lane >= offset)
        {
            incl += other;
        }
    }
    if (lane == kWarpSize - 1)
    {
        scratch[warp] = incl;
    }
    __syncthreads();
    T before = incl - run; // exclusive prefix inside the warp
    for (int w = 0; w < warp; ++w)
    {
        before += scratch[w];
    }
    for (int i = begin; i < end; ++i)
    {
        data[i] += before;
    }
    __syncthreads();
}

// Shared memory a launch needs beyond the default 48 KiB must be opted into per kernel; returns
// cudaErrorInvalidValue when the device cannot give that much to one block.
template <typename Kernel>
inline cudaError_t prepareDynamicSharedMemory(Kernel kernel, size_t bytes)
{
    constexpr size_t kDefaultLimit = 48 * 1024;
    if (bytes <= kDefaultLimit)
    {
        return cudaSuccess;
    }
    int device = 0;
    cudaError_t status = cudaGetDevice(&device);
    if (status != cudaSuccess)
    {
        return status;
    }
    int optinLimit = 0;
    status = cudaDeviceGetAttribute(&optinLimit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    if (status != cudaSuccess)
    {
        return status;
    }
    if (bytes > static_cast<size_t>(optinLimit))
    {
        return cudaErrorInvalidValue;
    }
    return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

} // namespace kernels
} // namespace tokcompile

#endif // TOKCOMPILE_KERNEL_UTILS_CUH

/*
 * EvitSelect: EViT top-k selection, gather of the kept tokens and the fused token in one kernel.
 * Contract and semantics: evitSelectKernel.h.
 *
 * One thread block per image:
 *   1. scores s_j (float32, heads summed in order then divided by H, like torch's CPU mean) in
 *      shared memory;
 *   2. the descending rank of every token, rank_j = #{i : s_i > s_j} + #{i < j : s_i == s_j}
 *      (NaN ranks above everything, as in torch.topk). The ranks form a permutation, so
 *      slotSrc[rank_j] = j needs no sort; O(M^2 / threads) comparisons (DeiT's M = 196: one
 *      token and 196 comparisons per thread);
 *   3. slots [0, k) are the kept tokens in torch.topk(sorted=True) order; slots [k, M) the
 *      dropped ones, whose weighted sum is the fused token.
 */
#include "common/tokcompileKernelUtils.cuh"
#include "evitSelectPlugin/evitSelectKernel.h"

#include <cmath>

namespace tokcompile
{
namespace kernels
{
namespace
{

constexpr int kEvitThreads = 256;

// True when token i (score si) ranks before token j (score sj) in torch.topk(largest=True) order.
__device__ __forceinline__ bool ranksBefore(float si, int i, float sj, int j)
{
    bool const iNan = isnan(si);
    bool const jNan = isnan(sj);
    if (iNan || jNan)
    {
        return iNan && (!jNan || i < j);
    }
    return si > sj || (si == sj && i < j);
}

template <typename T>
__global__ void __launch_bounds__(kEvitThreads)
    evitSelectKernel(T const* __restrict__ x, float const* __restrict__ attn, T* __restrict__ out,
        int64_t* __restrict__ kept, int numHeads, int numTokens, int channels, int k, int numPrefix, int fuse)
{
    extern __shared__ __align__(16) unsigned char tokSmem[];
    int const M = numTokens - numPrefix;
    float* score = reinterpret_cast<float*>(tokSmem); // [M]
    int* slotSrc = reinterpret_cast<int*>(score + M); // [M]: token (0-based after the prefix) in rank slot r

    int const b = blockIdx.x;
    int const tid = threadIdx.x;
    int const outRows = numPrefix + k + fuse;
    float const* attnB = attn + static_cast<int64_t>(b) * numHeads * numTokens + numPrefix;
    T const* xB = x + static_cast<int64_t>(b) * numTokens * channels;
    T* outB = out + static_cast<int64_t>(b) * outRows * channels;

    // 1. Mean over heads in float32. __fadd_rn/__fdiv_rn keep nvcc from contracting or
    // approximating: the reference rounds each step.
    float const heads = static_cast<float>(numHeads);
    for (int j = tid; j < M; j += kEvitThreads)
    {
        float acc = 0.0F;
        for (int h = 0; h < numHeads; ++h)
        {
            acc = __fadd_rn(acc, attnB[static_cast<int64_t>(h) * numTokens + j]);
        }
        score[j] = __fdiv_rn(acc, heads);
    }
    __syncthreads();

    // 2. Descending rank -> slot. All threads read score[i] for the same i at once (broadcast).
    for (int j = tid; j < M; j += kEvitThreads)
    {
        float const sj = score[j];
        int rank = 0;
        for (int i = 0; i < M; ++i)
        {
            rank += ranksBefore(score[i], i, sj, j) ? 1 : 0;
        }
        slotSrc[rank] = j;
    }
    __syncthreads();

    // 3a. Kept positions in x.
    for (int r = tid; r < k; r += kEvitThreads)
    {
        kept[static_cast<int64_t>(b) * k + r] = static_cast<int64_t>(slotSrc[r]) + numPrefix;
    }

    // 3b. Prefix rows, then kept rows in rank order: one flat loop over (row, 16-byte vector)
    // so every thread has work; element-wise when rows are not 16-byte multiples or aligned.
    int const copyRows = numPrefix + k;
    size_t const rowBytes = static_cast<size_t>(channels) * sizeof(T);
    bool const vectorized = rowBytes % sizeof(uint4) == 0
        && (reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(out)) % sizeof(uint4) == 0;
    if (vectorized)
    {
        int const perRow = static_cast<int>(rowBytes / sizeof(uint4));
        int64_t const total = static_cast<int64_t>(copyRows) * perRow;
        for (int64_t e = tid; e < total; e += kEvitThreads)
        {
            int const o = static_cast<int>(e / perRow);
            int const q = static_cast<int>(e - static_cast<int64_t>(o) * perRow);
            int const src = o < numPrefix ? o : numPrefix + slotSrc[o - numPrefix];
            reinterpret_cast<uint4*>(outB + static_cast<int64_t>(o) * channels)[q]
                = reinterpret_cast<uint4 const*>(xB + static_cast<int64_t>(src) * channels)[q];
        }
    }
    else
    {
        int64_t const total = static_cast<int64_t>(copyRows) * channels;
        for (int64_t e = tid; e < total; e += kEvitThreads)
        {
            int const o = static_cast<int>(e / channels);
            int const c = static_cast<int>(e - static_cast<int64_t>(o) * channels);
            int const src = o < numPrefix ? o : numPrefix + slotSrc[o - numPrefix];
            outB[static_cast<int64_t>(o) * channels + c] = xB[static_cast<int64_t>(src) * channels + c];
        }
    }

    // 3c. Fused token: Σ over dropped tokens of s_j · x_j in float32 (raw weights, EViT's code).
    if (fuse != 0)
    {
        T* fused = outB + static_cast<int64_t>(copyRows) * channels;
        for (int c = tid; c < channels; c += kEvitThreads)
        {
            float acc = 0.0F;
            for (int r = k; r < M; ++r)
            {
                int const j = slotSrc[r];
                acc = fmaf(score[j], toFloat(xB[static_cast<int64_t>(numPrefix + j) * channels + c]), acc);
            }
            fused[c] = fromFloat<T>(acc);
        }
    }
}

template <typename T>
cudaError_t launchEvitSelect(void const* x, float const* attn, void* out, int64_t* kept, int32_t batch,
    int32_t numHeads, int32_t numTokens, int32_t channels, int32_t k, int32_t numPrefix, int32_t fuse,
    cudaStream_t stream)
{
    size_t const smemBytes = static_cast<size_t>(numTokens - numPrefix) * (sizeof(float) + sizeof(int));
    auto kernel = evitSelectKernel<T>;
    cudaError_t const status = prepareDynamicSharedMemory(kernel, smemBytes);
    if (status != cudaSuccess)
    {
        return status;
    }
    kernel<<<batch, kEvitThreads, smemBytes, stream>>>(
        static_cast<T const*>(x), attn, static_cast<T*>(out), kept, numHeads, numTokens, channels, k, numPrefix, fuse);
    return cudaGetLastError();
}

} // namespace
} // namespace kernels
} // namespace tokcompile

extern "C" cudaError_t tokcompileEvitSelect(void const* x, float const* attn, void* out, int64_t* kept, int32_t batch,
    int32_t numHeads, int32_t numTokens, int32_t channels, int32_t k, int32_t numPrefix, int32_t fuse, int32_t dtype,
    cudaStream_t stream)
{
    using namespace tokcompile::kernels;
    if (batch < 0 || numHeads < 1 || channels < 1 || numPrefix < 0 || k < 1 || numTokens - numPrefix <= k
        || (fuse != 0 && fuse != 1))
    {
        return cudaErrorInvalidValue;
    }
    if (batch == 0)
    {
        return cudaSuccess;
    }
    if (x == nullptr || attn == nullptr || out == nullptr || kept == nullptr)
    {
        return cudaErrorInvalidValue;
    }
    switch (dtype)
    {
    case TOKCOMPILE_FLOAT32:
        return launchEvitSelect<float>(
            x, attn, out, kept, batch, numHeads, numTokens, channels, k, numPrefix, fuse, stream);
    case TOKCOMPILE_FLOAT16:
        return launchEvitSelect<__half>(
            x, attn, out, kept, batch, numHeads, numTokens, channels, k, numPrefix, fuse, stream);
    case TOKCOMPILE_BFLOAT16:
        return launchEvitSelect<__nv_bfloat16>(
            x, attn, out, kept, batch, numHeads, numTokens, channels, k, numPrefix, fuse, stream);
    default: return cudaErrorInvalidValue;
    }
}

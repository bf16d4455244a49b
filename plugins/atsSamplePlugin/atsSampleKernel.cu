/*
 * AtsSample: ATS inverse-transform sampling with per-image de-duplication, one block per image.
 * Contract, semantics and rounding policy: atsSampleKernel.h and tokcompile/ops/ats_sample.py.
 *
 * Steps (each separated by a block barrier):
 *   1. one warp per token: s_j = float(Σ_h attn) · float(sqrt(Σ v²)), both sums in double;
 *   2. total = float(Σ_j s_j in double), m = #scored tokens; s_j /= total;
 *   3. stable ascending rank of key_j = (scored ? s_j : +inf), order[rank_j] = j (the ranks are
 *      a permutation); O(n^2 / threads) comparisons (n = 197: one token, 197 per thread);
 *   4. cdf = inclusive scan of s[order] in double (chunked block scan), rounded once to float;
 *   5. degenerate images (span <= 0) keep every scored token; otherwise cdfn, y0, and one thread
 *      per sample finds its nearest cdfn slot by a full scan of the m slots (first index on ties,
 *      as torch.argmin; no assumption that cdfn or the picks are monotone): O(M m / threads);
 *   6. picked slots are compacted in slot order by an inclusive scan of the picked flags.
 */
#include "atsSamplePlugin/atsSampleKernel.h"
#include "common/tokcompileKernelUtils.cuh"

#include <cmath>

namespace tokcompile
{
namespace kernels
{
namespace
{

constexpr int kAtsThreads = 256;
constexpr int kAtsWarps = kAtsThreads / kWarpSize;

// Shared memory per token: cdf (double), s, cdfn / sort key (float), order, picked (int).
constexpr size_t kAtsSmemPerToken = sizeof(double) + 2 * sizeof(float) + 2 * sizeof(int);

// True when (a, i) sorts before (b, j) in a stable ascending sort that puts NaN last, as
// torch.sort(stable=True) does.
__device__ __forceinline__ bool sortsBefore(float a, int i, float b, int j)
{
    bool const aNan = isnan(a);
    bool const bNan = isnan(b);
    if (aNan || bNan)
    {
        return bNan && (!aNan || i < j);
    }
    return a < b || (a == b && i < j);
}

__device__ __forceinline__ bool isTrue(uint8_t v)
{
    return v != 0;
}
__device__ __forceinline__ bool isTrue(int32_t v)
{
    return v != 0;
}

template <typename TV, typename TM>
__global__ void __launch_bounds__(kAtsThreads)
    atsSampleKernel(float const* __restrict__ attn, TV const* __restrict__ v, TM const* __restrict__ valid,
        int64_t* __restrict__ rows, int64_t* __restrict__ count, int numHeads, int n, int headDim, int numSamples)
{
    extern __shared__ __align__(16) unsigned char tokSmem[];
    double* cdf = reinterpret_cast<double*>(tokSmem); // [n]; later reused as int positions
    float* s = reinterpret_cast<float*>(cdf + n);     // [n] scores, by position
    float* cdfn = s + n;                              // [n] sort keys, then normalised cdf, by slot
    int* order = reinterpret_cast<int*>(cdfn + n);    // [n] slot -> position
    int* picked = order + n;                          // [n] scored flag by position, then picked flag by slot

    __shared__ double scratchD[kAtsWarps];
    __shared__ float scratchF[kAtsWarps];
    __shared__ int scratchI[kAtsWarps];

    int const b = blockIdx.x;
    int const tid = threadIdx.x;
    int const lane = tid % kWarpSize;
    int const warp = tid / kWarpSize;
    float const* attnB = attn + static_cast<int64_t>(b) * numHeads * n;
    TV const* vB = v + static_cast<int64_t>(b) * numHeads * n * headDim;
    TM const* validB = valid + static_cast<int64_t>(b) * n;
    int64_t* rowsB = rows + static_cast<int64_t>(b) * n;

    // 1. Raw scores. Padded tokens are never read (their v may hold anything).
    for (int j = warp; j < n; j += kAtsWarps)
    {
        bool const scored = j > 0 && isTrue(validB[j]); // warp-uniform
        float sj = 0.0F;
        if (scored)
        {
            double sq = 0.0;
            for (int h = 0; h < numHeads; ++h)
            {
                TV const* row = vB + (static_cast<int64_t>(h) * n + j) * headDim;
                for (int d = lane; d < headDim; d += kWarpSize)
                {
                    double const e = static_cast<double>(toFloat(row[d]));
                    sq += e * e;
                }
            }
            double headSum = 0.0;
            for (int h = lane; h < numHeads; h += kWarpSize)
            {
                headSum += static_cast<double>(attnB[static_cast<int64_t>(h) * n + j]);
            }
            sq = warpAllReduce(sq, SumOp{});
            headSum = warpAllReduce(headSum, SumOp{});
            sj = __fmul_rn(__double2float_rn(headSum), __double2float_rn(sqrt(sq)));
        }
        if (lane == 0)
        {
            s[j] = sj;
            picked[j] = scored ? 1 : 0;
        }
    }
    __syncthreads();

    // 2. Normalise; m = number of scored tokens.
    double partial = 0.0;
    int scoredPartial = 0;
    for (int j = tid; j < n; j += kAtsThreads)
    {
        partial += static_cast<double>(s[j]);
        scoredPartial += picked[j];
    }
    float const total = __double2float_rn(blockAllReduce<kAtsThreads>(partial, scratchD, SumOp{}, 0.0));
    int const m = blockAllReduce<kAtsThreads>(scoredPartial, scratchI, SumOp{}, 0);
    bool const hasTotal = total > 0.0F;
    float const inf = __int_as_float(0x7f800000);
    for (int j = tid; j < n; j += kAtsThreads)
    {
        float const sj = hasTotal ? __fdiv_rn(s[j], total) : 0.0F;
        s[j] = sj;
        cdfn[j] = picked[j] != 0 ? sj : inf; // sort key: unscored tokens after every scored one
    }
    __syncthreads();

    // 3. Stable ascending order.
    for (int j = tid; j < n; j += kAtsThreads)
    {
        float const kj = cdfn[j];
        int rank = 0;
        for (int i = 0; i < n; ++i)
        {
            rank += sortsBefore(cdfn[i], i, kj, j) ? 1 : 0;
        }
        order[rank] = j;
    }
    __syncthreads();

    // 4. cdf over the sorted scores (unscored slots add 0), in double.
    for (int k = tid; k < n; k += kAtsThreads)
    {
        cdf[k] = static_cast<double>(s[order[k]]);
    }
    blockInclusiveScan<kAtsThreads>(cdf, n, scratchD);
    float const c0 = __double2float_rn(cdf[0]);
    float const span = __fsub_rn(__double2float_rn(cdf[m > 0 ? m - 1 : 0]), c0);

    // 5a. Degenerate image (only CLS, one token, or all scores 0): keep every scored token.
    if (!(span > 0.0F)) // block-uniform: every thread computed span from the same shared values
    {
        for (int p = tid; p < n; p += kAtsThreads)
        {
            rowsB[p] = (p >= 1 && p <= m) ? static_cast<int64_t>(order[p - 1]) : 0;
        }
        if (tid == 0)
        {
            count[b] = 1 + m;
        }
        return;
    }

    // 5b. Normalised cdf and its smallest positive value y0.
    float y0Partial = inf;
    for (int k = tid; k < n; k += kAtsThreads)
    {
        float const c = __fdiv_rn(__fsub_rn(__double2float_rn(cdf[k]), c0), span);
        cdfn[k] = c;
        picked[k] = 0;
        if (k < m && c > 0.0F)
        {
            y0Partial = fminf(y0Partial, c);
        }
    }
    float const y0 = blockAllReduce<kAtsThreads>(y0Partial, scratchF, MinOp{}, inf); // barrier: cdfn complete

    // 5c. One thread per sample: nearest cdfn slot among the m scored ones.
    float const oneMinusY0 = __fsub_rn(1.0F, y0);
    double const denominator = static_cast<double>(numSamples > 1 ? numSamples - 1 : 1);
    for (int i = tid; i < numSamples; i += kAtsThreads)
    {
        float const t = __double2float_rn(__ddiv_rn(static_cast<double>(i), denominator));
        float const y = __fadd_rn(y0, __fmul_rn(oneMinusY0, t));
        float best = inf;
        int bestSlot = 0;
        for (int k = 0; k < m; ++k)
        {
            float const d = fabsf(__fsub_rn(y, cdfn[k]));
            if (d < best)
            {
                best = d;
                bestSlot = k;
            }
        }
        picked[bestSlot] = 1; // concurrent writes of the same value
    }
    __syncthreads();

    // 6. unique(pick), ascending: compact the picked slots in slot order behind CLS.
    int* position = reinterpret_cast<int*>(cdf); // cdf is no longer needed
    for (int k = tid; k < n; k += kAtsThreads)
    {
        position[k] = picked[k];
    }
    blockInclusiveScan<kAtsThreads>(position, n, scratchI);
    int const kept = position[n - 1];
    for (int k = tid; k < n; k += kAtsThreads)
    {
        if (picked[k] != 0)
        {
            rowsB[position[k]] = static_cast<int64_t>(order[k]); // position[k] in 1..kept
        }
    }
    for (int p = tid; p < n; p += kAtsThreads)
    {
        if (p == 0 || p > kept)
        {
            rowsB[p] = 0;
        }
    }
    if (tid == 0)
    {
        count[b] = 1 + kept;
    }
}

template <typename TV, typename TM>
cudaError_t launchAtsSample(float const* attn, void const* v, void const* valid, int64_t* rows, int64_t* count,
    int32_t batch, int32_t numHeads, int32_t numTokens, int32_t headDim, int32_t numSamples, cudaStream_t stream)
{
    size_t const smemBytes = static_cast<size_t>(numTokens) * kAtsSmemPerToken;
    auto kernel = atsSampleKernel<TV, TM>;
    cudaError_t const status = prepareDynamicSharedMemory(kernel, smemBytes);
    if (status != cudaSuccess)
    {
        return status;
    }
    kernel<<<batch, kAtsThreads, smemBytes, stream>>>(attn, static_cast<TV const*>(v), static_cast<TM const*>(valid),
        rows, count, numHeads, numTokens, headDim, numSamples);
    return cudaGetLastError();
}

template <typename TV>
cudaError_t dispatchMask(float const* attn, void const* v, void const* valid, int64_t* rows, int64_t* count,
    int32_t batch, int32_t numHeads, int32_t numTokens, int32_t headDim, int32_t numSamples, int32_t validDtype,
    cudaStream_t stream)
{
    switch (validDtype)
    {
    case TOKCOMPILE_BOOL:
        return launchAtsSample<TV, uint8_t>(
            attn, v, valid, rows, count, batch, numHeads, numTokens, headDim, numSamples, stream);
    case TOKCOMPILE_INT32:
        return launchAtsSample<TV, int32_t>(
            attn, v, valid, rows, count, batch, numHeads, numTokens, headDim, numSamples, stream);
    default: return cudaErrorInvalidValue;
    }
}

} // namespace
} // namespace kernels
} // namespace tokcompile

extern "C" cudaError_t tokcompileAtsSample(float const* attn, void const* v, void const* valid, int64_t* rows,
    int64_t* count, int32_t batch, int32_t numHeads, int32_t numTokens, int32_t headDim, int32_t numSamples,
    int32_t vDtype, int32_t validDtype, cudaStream_t stream)
{
    using namespace tokcompile::kernels;
    if (batch < 0 || numHeads < 1 || numTokens < 1 || headDim < 1 || numSamples < 1)
    {
        return cudaErrorInvalidValue;
    }
    if (batch == 0)
    {
        return cudaSuccess;
    }
    if (attn == nullptr || v == nullptr || valid == nullptr || rows == nullptr || count == nullptr)
    {
        return cudaErrorInvalidValue;
    }
    switch (vDtype)
    {
    case TOKCOMPILE_FLOAT32:
        return dispatchMask<float>(
            attn, v, valid, rows, count, batch, numHeads, numTokens, headDim, numSamples, validDtype, stream);
    case TOKCOMPILE_FLOAT16:
        return dispatchMask<__half>(
            attn, v, valid, rows, count, batch, numHeads, numTokens, headDim, numSamples, validDtype, stream);
    case TOKCOMPILE_BFLOAT16:
        return dispatchMask<__nv_bfloat16>(
            attn, v, valid, rows, count, batch, numHeads, numTokens, headDim, numSamples, validDtype, stream);
    default: return cudaErrorInvalidValue;
    }
}

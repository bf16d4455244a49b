/*
 * AtsSample: ATS inverse-transform sampling with per-image de-duplication, one block per image.
 * Contract, semantics and arithmetic: atsSampleKernel.h and tokcompile/ops/ats_sample.py.
 *
 * Steps (each separated by a block barrier):
 *   1. one warp per token: s_j = float(Σ_h attn) · sqrt(float(Σ v²)), both sums exact in int64
 *      fixed point (a power-of-two scale per sum from its largest term), rounded once to float;
 *   2. m = #scored tokens, the largest score and from it the integer-weight scale;
 *   3. stable ascending rank of key_j = (scored ? s_j : +inf), order[rank_j] = j (the ranks are
 *      a permutation); O(n^2 / threads) comparisons (n = 197: one token, 197 per thread);
 *   4. E = inclusive scan of the integer weights w[order] (int64, exact), minus w[order[0]];
 *   5. degenerate images (E[m-1] == 0) keep every scored token; otherwise one thread per sample
 *      finds its nearest slot by a full scan of the m slots in exact int64 arithmetic (first
 *      index on ties, as the reference): O(M m / threads);
 *   6. picked slots are compacted in slot order by an inclusive scan of the picked flags.
 */
#include "atsSamplePlugin/atsSampleKernel.h"
#include "common/tokcompileKernelUtils.cuh"

#include <climits>
#include <cmath>

namespace tokcompile
{
namespace kernels
{
namespace
{

constexpr int kAtsThreads = 256;
constexpr int kAtsWarps = kAtsThreads / kWarpSize;

// ops/ats_sample.py: SUM_BITS, WEIGHT_BUDGET, EXP_MIN, EXP_MAX.
constexpr int kSumBits = 40;
constexpr int kWeightBudget = 61;
constexpr int kExpMin = -60;
constexpr int kExpMax = 127;

// Shared memory per token: E (int64), s, sort key (float), order, picked (int).
constexpr size_t kAtsSmemPerToken = sizeof(long long) + 2 * sizeof(float) + 2 * sizeof(int);

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

// floor(log2(x)) of x >= 0, clamped to [kExpMin, kExpMax]; kExpMin for 0 (the reference's _exponent).
__device__ __forceinline__ int floorLog2(float x)
{
    if (!(x > 0.0F))
    {
        return kExpMin;
    }
    int e = 0;
    frexpf(x, &e);
    return min(max(e - 1, kExpMin), kExpMax);
}

// 2^k, exactly (k stays in [-100, 127]: a normal float).
__device__ __forceinline__ float pow2(int k)
{
    return ldexpf(1.0F, k);
}

// floor(x · scale) as int64; x · scale is exact (scale is a power of two, no overflow).
__device__ __forceinline__ long long fixedPoint(float x, float scale)
{
    return static_cast<long long>(floorf(__fmul_rn(x, scale)));
}

struct MaxOp
{
    __device__ __forceinline__ float operator()(float a, float b) const
    {
        return fmaxf(a, b);
    }
};

struct MinInt64Op
{
    __device__ __forceinline__ long long operator()(long long a, long long b) const
    {
        return a < b ? a : b;
    }
};

template <typename TV, typename TM>
__global__ void __launch_bounds__(kAtsThreads)
    atsSampleKernel(float const* __restrict__ attn, TV const* __restrict__ v, TM const* __restrict__ valid,
        int64_t* __restrict__ rows, int64_t* __restrict__ count, int numHeads, int n, int headDim, int numSamples)
{
    extern __shared__ __align__(16) unsigned char tokSmem[];
    long long* cum = reinterpret_cast<long long*>(tokSmem); // [n] E by slot; later reused as int positions
    float* s = reinterpret_cast<float*>(cum + n);             // [n] scores, by position
    float* key = s + n;                                       // [n] sort keys, by position
    int* order = reinterpret_cast<int*>(key + n);             // [n] slot -> position
    int* picked = order + n;                                  // [n] scored flag by position, then picked flag by slot

    __shared__ long long scratchL[kAtsWarps];
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

    // 1. Scores from exact sums. Padded tokens are never read (their v may hold anything).
    for (int j = warp; j < n; j += kAtsWarps)
    {
        bool const scored = j > 0 && isTrue(validB[j]); // warp-uniform
        float sj = 0.0F;
        if (scored)
        {
            float attnMax = 0.0F;
            for (int h = lane; h < numHeads; h += kWarpSize)
            {
                attnMax = fmaxf(attnMax, attnB[static_cast<int64_t>(h) * n + j]);
            }
            int const attnExp = floorLog2(warpAllReduce(attnMax, MaxOp{}));
            float const attnScale = pow2(kSumBits - attnExp);
            long long attnSum = 0;
            for (int h = lane; h < numHeads; h += kWarpSize)
            {
                attnSum += fixedPoint(attnB[static_cast<int64_t>(h) * n + j], attnScale);
            }
            float sqMax = 0.0F;
            for (int h = 0; h < numHeads; ++h)
            {
                TV const* row = vB + (static_cast<int64_t>(h) * n + j) * headDim;
                for (int d = lane; d < headDim; d += kWarpSize)
                {
                    float const e = toFloat(row[d]);
                    sqMax = fmaxf(sqMax, __fmul_rn(e, e));
                }
            }
            int const sqExp = floorLog2(warpAllReduce(sqMax, MaxOp{}));
            float const sqScale = pow2(kSumBits - sqExp);
            long long sqSum = 0;
            for (int h = 0; h < numHeads; ++h)
            {
                TV const* row = vB + (static_cast<int64_t>(h) * n + j) * headDim;
                for (int d = lane; d < headDim; d += kWarpSize)
                {
                    float const e = toFloat(row[d]);
                    sqSum += fixedPoint(__fmul_rn(e, e), sqScale);
                }
            }
            attnSum = warpAllReduce(attnSum, SumOp{}); // integers: exact in any order
            sqSum = warpAllReduce(sqSum, SumOp{});
            float const headSum = __fmul_rn(__ll2float_rn(attnSum), pow2(attnExp - kSumBits));
            float const sq = __fmul_rn(__ll2float_rn(sqSum), pow2(sqExp - kSumBits));
            sj = __fmul_rn(headSum, __fsqrt_rn(sq));
        }
        if (lane == 0)
        {
            s[j] = sj;
            picked[j] = scored ? 1 : 0;
        }
    }
    __syncthreads();

    // 2. m = number of scored tokens; the weight scale 2^(W - e), W = 61 - bitlength(m · T).
    float maxPartial = 0.0F;
    int scoredPartial = 0;
    for (int j = tid; j < n; j += kAtsThreads)
    {
        maxPartial = fmaxf(maxPartial, s[j]);
        scoredPartial += picked[j];
    }
    float const sMax = blockAllReduce<kAtsThreads>(maxPartial, scratchF, MaxOp{}, 0.0F);
    int const m = blockAllReduce<kAtsThreads>(scoredPartial, scratchI, SumOp{}, 0);
    long long const T = numSamples > 1 ? numSamples - 1 : 1;
    long long const mt = max(static_cast<long long>(m) * T, 1LL);
    int const weightBits = kWeightBudget - (64 - __clzll(mt));
    float const weightScale = pow2(weightBits - floorLog2(sMax));
    float const inf = __int_as_float(0x7f800000);
    for (int j = tid; j < n; j += kAtsThreads)
    {
        key[j] = picked[j] != 0 ? s[j] : inf; // sort key: unscored tokens after every scored one
    }
    __syncthreads();

    // 3. Stable ascending order.
    for (int j = tid; j < n; j += kAtsThreads)
    {
        float const kj = key[j];
        int rank = 0;
        for (int i = 0; i < n; ++i)
        {
            rank += sortsBefore(key[i], i, kj, j) ? 1 : 0;
        }
        order[rank] = j;
    }
    __syncthreads();

    // 4. E_k = Σ_{1 <= i <= k} w[order[i]] (unscored slots add 0), exact in int64.
    for (int k = tid; k < n; k += kAtsThreads)
    {
        int const j = order[k];
        cum[k] = picked[j] != 0 ? fixedPoint(s[j], weightScale) : 0;
    }
    __syncthreads();
    long long const first = cum[0];
    blockInclusiveScan<kAtsThreads>(cum, n, scratchL);
    for (int k = tid; k < n; k += kAtsThreads)
    {
        cum[k] -= first;
    }
    __syncthreads();
    long long const D = cum[n - 1];

    // 5a. Degenerate image (only CLS, one token, or all scores 0): keep every scored token.
    if (D == 0) // block-uniform: every thread read the same shared value
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

    // 5b. A = y0 · D, the smallest positive E.
    long long aPartial = LLONG_MAX;
    for (int k = tid; k < m; k += kAtsThreads)
    {
        picked[k] = 0;
        if (cum[k] > 0)
        {
            aPartial = min(aPartial, cum[k]);
        }
    }
    for (int k = m + tid; k < n; k += kAtsThreads)
    {
        picked[k] = 0;
    }
    long long const A = blockAllReduce<kAtsThreads>(aPartial, scratchL, MinInt64Op{}, LLONG_MAX); // barrier

    // 5c. One thread per sample: y_i · D · T = A · T + (D - A) · i, nearest T · E_k among the m
    // scored slots (first index on ties). Every value stays below 2^62.
    for (int i = tid; i < numSamples; i += kAtsThreads)
    {
        long long const y = A * T + (D - A) * static_cast<long long>(i);
        long long best = LLONG_MAX;
        int bestSlot = 0;
        for (int k = 0; k < m; ++k)
        {
            long long const d = llabs(y - T * cum[k]);
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
    int* position = reinterpret_cast<int*>(cum); // E is no longer needed
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

/*
 * AtsSample kernel launcher: ATS inverse-transform token sampling with per-image de-duplication.
 *
 * Semantics, tie-breaking, degenerate cases and arithmetic: tokcompile/ops/ats_sample.py (module
 * docstring and ats_sample_reference), methods-reference.md §3.2 / §3.6. Per image b, over the
 * scored tokens (valid and not CLS, m of them):
 *
 *     s_j    = (Σ_h attn[h, j]) · ||concat_h v[h, j, :]||₂
 *     order  = stable ascending sort of s (ties: lower position first; unscored tokens last)
 *     w      = floor(s[order] · 2^(W - e)), e = floor(log2 max s), W = 61 - bitlength(m · T)
 *     E_k    = Σ_{1 <= i <= k} w_i,  D = E_{m-1},  A = min{E_k > 0},  T = max(M - 1, 1)
 *     pick_i = argmin_k |A · T + (D - A) · i - T · E_k| (first index on ties), keep = unique(pick)
 *     rows   = [0, order[keep]..., 0 padding],  count = 1 + |keep|
 *     degenerate (D == 0, includes m <= 1): rows = [0, order[0..m-1]], count = 1 + m
 *
 * Arithmetic follows the reference exactly: Σ_h attn and Σ v² are exact int64 sums of
 * floor(x · 2^(40 - e)) (e from the sum's largest term), rounded once to float; every other float
 * operation is one explicit __f*_rn intrinsic (nvcc cannot contract them into FMAs); the CDF and
 * the sampling are exact int64. Nothing depends on the reduction order, so the selections match
 * the reference's (and the ONNX body's on any backend).
 */
#ifndef TOKCOMPILE_ATS_SAMPLE_KERNEL_H
#define TOKCOMPILE_ATS_SAMPLE_KERNEL_H

#include "common/tokcompileKernelApi.h"

#ifdef __cplusplus
extern "C"
{
#endif

    /*
     * attn   [batch, numHeads, numTokens] float32           device, CLS row of the attention
     * v      [batch, numHeads, numTokens, headDim]          device, vDtype (FLOAT32 / FLOAT16 / BFLOAT16)
     * valid  [batch, numTokens]                             device, validDtype (BOOL or INT32)
     * rows   [batch, numTokens] int64                       device: CLS, kept positions, 0 padding
     * count  [batch] int64                                  device: 1 + number of kept tokens
     *
     * Padded / invalid tokens (valid false) never influence the result, whatever their attn and v.
     * Requires numSamples >= 1, numHeads >= 1, headDim >= 1, numTokens >= 1; batch == 0 launches
     * nothing. One thread block per image; needs 24 * numTokens bytes of shared memory (more than
     * 48 KiB is opted into when the device allows it: numTokens up to ~2000 always fits). Returns
     * cudaErrorInvalidValue for bad arguments, else the launch status.
     */
    TOKCOMPILE_KERNEL_API cudaError_t tokcompileAtsSample(float const* attn, void const* v, void const* valid,
        int64_t* rows, int64_t* count, int32_t batch, int32_t numHeads, int32_t numTokens, int32_t headDim,
        int32_t numSamples, int32_t vDtype, int32_t validDtype, cudaStream_t stream);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* TOKCOMPILE_ATS_SAMPLE_KERNEL_H */

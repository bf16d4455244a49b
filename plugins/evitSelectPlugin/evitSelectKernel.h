/*
 * EvitSelect kernel launcher (EViT top-k selection + gather + fused token, one launch).
 *
 * Semantics: tokcompile/ops/evit_select.py (evit_select_reference), methods-reference.md §1.2:
 *
 *     s[b, j]   = (Σ_h attn[b, h, P + j]) / H        j = 0..N-P-1, float32, heads summed in order
 *     idx[b]    = top-k of s[b] in descending order; equal scores: lower j first
 *     out[b]    = [x[b, :P], x[b, P + idx[b]], (Σ_{j ∉ idx[b]} s[b, j] · x[b, P + j])?]
 *     kept[b]   = idx[b] + P                                  int64
 *
 * The fused token (fuse = 1) sums in float32 with the raw, un-normalised weights and is rounded
 * once to x's type. Ties: torch.topk leaves their order unspecified; here they are broken by
 * position, so the kernel is deterministic and equals torch.topk(sorted=True) whenever the
 * scores are distinct.
 */
#ifndef TOKCOMPILE_EVIT_SELECT_KERNEL_H
#define TOKCOMPILE_EVIT_SELECT_KERNEL_H

#include "common/tokcompileKernelApi.h"

#ifdef __cplusplus
extern "C"
{
#endif

    /*
     * x      [batch, numTokens, channels]             device, dtype (FLOAT32 / FLOAT16 / BFLOAT16)
     * attn   [batch, numHeads, numTokens] float32      device, CLS row of the post-softmax attention
     * out    [batch, numPrefix + k + fuse, channels]   device, same dtype as x
     * kept   [batch, k] int64                          device
     *
     * Requires 1 <= k < numTokens - numPrefix, numPrefix >= 0, fuse in {0, 1}, numHeads >= 1,
     * channels >= 1. batch == 0 launches nothing. One thread block per image; needs
     * 8 * (numTokens - numPrefix) bytes of shared memory (more than 48 KiB is opted into when the
     * device allows it). Returns cudaErrorInvalidValue for bad arguments, else the launch status.
     */
    TOKCOMPILE_KERNEL_API cudaError_t tokcompileEvitSelect(void const* x, float const* attn, void* out, int64_t* kept,
        int32_t batch, int32_t numHeads, int32_t numTokens, int32_t channels, int32_t k, int32_t numPrefix,
        int32_t fuse, int32_t dtype, cudaStream_t stream);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* TOKCOMPILE_EVIT_SELECT_KERNEL_H */

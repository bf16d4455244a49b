/*
 * AtsSample TensorRT plugin (IPluginV3): ATS inverse-transform token sampling with per-image
 * de-duplication (Adaptive Token Sampling, ECCV'22; methods-reference.md §3.2, §3.6).
 *
 * Name "AtsSample", version "1", namespace "tokcompile", matching the ONNX node AtsSample in
 * domain tokcompile (tokcompile/ops/ats_sample.py) with plugin_namespace="tokcompile" and
 * plugin_version="1".
 *
 * Inputs   attn   [B, H, n]      float32  CLS row of the post-softmax attention
 *          v      [B, H, n, hd]  float32 / float16 / bfloat16
 *          valid  [B, n]         bool (int32 0/1 also accepted, see below)
 * Outputs  rows   [B, n]  int64  CLS (0), the kept token positions by ascending score, 0 padding
 *          count  [B]     int64  1 + number of kept tokens: rows[b, :count[b]] is the result
 * Field    num_samples (>= 1): M, the number of inverse-CDF samples (int32 or int64 scalar).
 *
 * Why a padded output plus a count tensor, not a data-dependent output size
 * ------------------------------------------------------------------------
 * The number of kept tokens differs per image and is known only after the kernel ran. IPluginV3
 * could declare it as a size tensor (IExprBuilder::declareSizeTensor, as in TensorRT's
 * sampleNonZeroPlugin), but tokcompile deliberately keeps every shape static:
 *   - ATS bundles are split into stages at each data-dependent point (DESIGN.md §4). Between
 *     stages the bucketed runtime reads `count`, takes the batch maximum, picks the smallest
 *     bucket >= it and runs the next stage's engine/optimization profile for that bucket, padding
 *     with masked tokens. The per-image counts are exactly what it needs; a data-dependent shape
 *     inside the engine would add nothing the runtime uses.
 *   - Static shapes keep each stage's engine free of data-dependent shapes: every tensor size
 *     follows from the stage's optimization profile, so TensorRT plans memory and picks kernels
 *     per profile, with no output allocator for a size it cannot know in advance.
 *   - A size tensor makes TensorRT copy the size to the host and synchronize inside the engine
 *     (plus output allocation callbacks); with rows padded to n there is no device->host sync
 *     inside the engine, only the one read of `count` that the runtime does between stages.
 *
 * On `valid`: TensorRT's headers warn that PluginTensorDesc does not support DataType::kBOOL, so
 * tokcompile's ONNX node passes the mask as int32 0/1 (the function body casts it back to bool).
 * kBOOL is still accepted for other producers of the node.
 */
#ifndef TOKCOMPILE_ATS_SAMPLE_PLUGIN_H
#define TOKCOMPILE_ATS_SAMPLE_PLUGIN_H

#include "common/tokcompilePluginBase.h"

#include <NvInferRuntime.h>

#include <cstdint>

namespace tokcompile
{
namespace plugin
{

struct AtsSampleParams
{
    int32_t numSamples{0};
};

class AtsSamplePlugin final : public PluginBase<AtsSamplePlugin>
{
public:
    static constexpr char const* kName = "AtsSample";
    static constexpr int32_t kNbInputs = 3;
    static constexpr int32_t kInputAttn = 0;
    static constexpr int32_t kInputV = 1;
    static constexpr int32_t kInputValid = 2;
    static constexpr int32_t kNbOutputs = 2;
    static constexpr int32_t kOutputRows = 0;
    static constexpr int32_t kOutputCount = 1;
    static constexpr int32_t kNbFields = 1;

    //! Throws PluginError when a field is out of range.
    explicit AtsSamplePlugin(AtsSampleParams const& params);
    AtsSamplePlugin(AtsSamplePlugin const& other);
    ~AtsSamplePlugin() override = default;

    // IPluginV3OneBuild (the rest: PluginBase)
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs, nvinfer1::DataType const* inputTypes,
        int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;

    // IPluginV3OneRuntime (the rest: PluginBase)
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;

    AtsSampleParams const& params() const noexcept
    {
        return mParams;
    }

private:
    friend class PluginBase<AtsSamplePlugin>;

    void initFields();
    //! PluginBase::supportsFormatCombination: the type tensor pos may have.
    bool supportsType(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut) const;
    //! Input shapes; -1 (unknown at build time) passes every check that needs the extent.
    void validateInputDims(nvinfer1::Dims const& attn, nvinfer1::Dims const& v, nvinfer1::Dims const& valid) const;
    //! Output shapes against the input shapes (runtime: every extent known).
    void validateOutputDims(nvinfer1::Dims const& attn, nvinfer1::Dims const& rows, nvinfer1::Dims const& count) const;

    AtsSampleParams mParams;
};

class AtsSamplePluginCreator final : public PluginCreatorBase<AtsSamplePlugin>
{
public:
    AtsSamplePluginCreator() noexcept;
    ~AtsSamplePluginCreator() override = default;

    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

    //! Parses and validates the fields; throws PluginError.
    static AtsSampleParams parseFields(nvinfer1::PluginFieldCollection const* fc);
};

} // namespace plugin
} // namespace tokcompile

#endif // TOKCOMPILE_ATS_SAMPLE_PLUGIN_H

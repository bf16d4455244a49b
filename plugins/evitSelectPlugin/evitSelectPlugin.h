/*
 * EvitSelect TensorRT plugin (IPluginV3): EViT top-k token selection, fused into one kernel.
 *
 * Name "EvitSelect", version "1", namespace "tokcompile": the ONNX node EvitSelect in domain
 * tokcompile (tokcompile/ops/evit_select.py) carries plugin_namespace="tokcompile" and
 * plugin_version="1", so the TensorRT ONNX parser (10.7+) picks this plugin when it is
 * registered and inlines the node's function body otherwise.
 *
 * Inputs   x     [B, N, C]  float32 / float16 / bfloat16
 *          attn  [B, H, N]  float32 (CLS row of the post-softmax attention, per head)
 * Outputs  out   [B, P + k + fuse, C]  same type as x: prefix, kept tokens by descending score,
 *                                      [fused token]
 *          kept  [B, k] int64          positions of the kept tokens in x
 * Fields   k (>= 1, < N - P), num_prefix P (>= 0), fuse (0 or 1): int32 or int64 scalars.
 *
 * Every output shape is a function of the input shapes and the fields, so the plugin adds no
 * data-dependent shape to the engine. Semantics and kernel: evitSelectKernel.h.
 */
#ifndef TOKCOMPILE_EVIT_SELECT_PLUGIN_H
#define TOKCOMPILE_EVIT_SELECT_PLUGIN_H

#include "common/tokcompilePluginBase.h"

#include <NvInferRuntime.h>

#include <cstdint>

namespace tokcompile
{
namespace plugin
{

struct EvitSelectParams
{
    int32_t k{0};
    int32_t numPrefix{0};
    int32_t fuse{0};
};

class EvitSelectPlugin final : public PluginBase<EvitSelectPlugin>
{
public:
    static constexpr char const* kName = "EvitSelect";
    static constexpr int32_t kNbInputs = 2;
    static constexpr int32_t kInputX = 0;
    static constexpr int32_t kInputAttn = 1;
    static constexpr int32_t kNbOutputs = 2;
    static constexpr int32_t kOutputTokens = 0;
    static constexpr int32_t kOutputKept = 1;
    static constexpr int32_t kNbFields = 3;

    //! Throws PluginError when a field is out of range.
    explicit EvitSelectPlugin(EvitSelectParams const& params);
    EvitSelectPlugin(EvitSelectPlugin const& other);
    ~EvitSelectPlugin() override = default;

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

    EvitSelectParams const& params() const noexcept
    {
        return mParams;
    }

private:
    friend class PluginBase<EvitSelectPlugin>;

    void initFields();
    //! PluginBase::supportsFormatCombination: the type tensor pos may have.
    bool supportsType(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut) const;
    //! Input shapes; -1 (unknown at build time) passes every check that needs the extent.
    void validateInputDims(nvinfer1::Dims const& x, nvinfer1::Dims const& attn) const;
    //! Output shapes against the input shapes (runtime: every extent known).
    void validateOutputDims(nvinfer1::Dims const& x, nvinfer1::Dims const& out, nvinfer1::Dims const& kept) const;

    EvitSelectParams mParams;
};

class EvitSelectPluginCreator final : public PluginCreatorBase<EvitSelectPlugin>
{
public:
    EvitSelectPluginCreator() noexcept;
    ~EvitSelectPluginCreator() override = default;

    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

    //! Parses and validates the fields (shared with tests of the glue); throws PluginError.
    static EvitSelectParams parseFields(nvinfer1::PluginFieldCollection const* fc);
};

} // namespace plugin
} // namespace tokcompile

#endif // TOKCOMPILE_EVIT_SELECT_PLUGIN_H

/*
 * EvitSelect plugin glue: fields, shapes, types, validation, launch. No device code here; the
 * kernel is behind evitSelectKernel.h.
 */
#include "evitSelectPlugin/evitSelectPlugin.h"

#include "evitSelectPlugin/evitSelectKernel.h"

#include <cstring>
#include <limits>
#include <memory>

using namespace nvinfer1;

namespace tokcompile
{
namespace plugin
{
namespace
{

constexpr char const* kFieldK = "k";
constexpr char const* kFieldNumPrefix = "num_prefix";
constexpr char const* kFieldFuse = "fuse";

constexpr int32_t kTokensRank = 3; // x [B, N, C], out [B, P + k + fuse, C]
constexpr int32_t kAttnRank = 3;   // attn [B, H, N]
constexpr int32_t kKeptRank = 2;   // kept [B, k]

} // namespace

EvitSelectPlugin::EvitSelectPlugin(EvitSelectParams const& params)
    : mParams(params)
{
    PLUGIN_VALIDATE(mParams.k >= 1, "field 'k' must be >= 1, got " << mParams.k);
    PLUGIN_VALIDATE(mParams.numPrefix >= 0, "field 'num_prefix' must be >= 0, got " << mParams.numPrefix);
    PLUGIN_VALIDATE(mParams.fuse == 0 || mParams.fuse == 1, "field 'fuse' must be 0 or 1, got " << mParams.fuse);
    initFields();
}

EvitSelectPlugin::EvitSelectPlugin(EvitSelectPlugin const& other)
    : PluginBase(other)
    , mParams(other.mParams)
{
    initFields();
}

void EvitSelectPlugin::initFields()
{
    // The fields point into this object, so every copy rebuilds them.
    setFields({PluginField(kFieldK, &mParams.k, PluginFieldType::kINT32, 1),
                  PluginField(kFieldNumPrefix, &mParams.numPrefix, PluginFieldType::kINT32, 1),
                  PluginField(kFieldFuse, &mParams.fuse, PluginFieldType::kINT32, 1)},
        std::string(kName) + "(k=" + std::to_string(mParams.k) + ", num_prefix=" + std::to_string(mParams.numPrefix)
            + ", fuse=" + std::to_string(mParams.fuse) + ")");
}

void EvitSelectPlugin::validateInputDims(Dims const& x, Dims const& attn) const
{
    PLUGIN_VALIDATE(x.nbDims == kTokensRank, "input 'x' must be [B, N, C], got " << dimsToString(x));
    PLUGIN_VALIDATE(attn.nbDims == kAttnRank, "input 'attn' must be [B, H, N], got " << dimsToString(attn));
    PLUGIN_VALIDATE(!knownAndDifferent(x.d[0], attn.d[0]),
        "batch of 'x' " << dimsToString(x) << " and 'attn' " << dimsToString(attn) << " differ");
    PLUGIN_VALIDATE(!knownAndDifferent(x.d[1], attn.d[2]),
        "token count of 'x' " << dimsToString(x) << " and 'attn' " << dimsToString(attn) << " differ");
    PLUGIN_VALIDATE(attn.d[1] != 0, "input 'attn' has no heads: " << dimsToString(attn));
    PLUGIN_VALIDATE(x.d[2] != 0, "input 'x' has no channels: " << dimsToString(x));
    if (x.d[1] >= 0)
    {
        PLUGIN_VALIDATE(x.d[1] - mParams.numPrefix > mParams.k,
            "field 'k' = " << mParams.k << " must be < N - num_prefix = " << x.d[1] << " - " << mParams.numPrefix
                           << " (k == N - num_prefix is the identity, which the export never lowers to this plugin)");
    }
}

void EvitSelectPlugin::validateOutputDims(Dims const& x, Dims const& out, Dims const& kept) const
{
    int64_t const outTokens = static_cast<int64_t>(mParams.numPrefix) + mParams.k + mParams.fuse;
    PLUGIN_VALIDATE(out.nbDims == kTokensRank && out.d[0] == x.d[0] && out.d[1] == outTokens && out.d[2] == x.d[2],
        "output 'out' must be [" << x.d[0] << ", " << outTokens << ", " << x.d[2] << "], got " << dimsToString(out));
    PLUGIN_VALIDATE(kept.nbDims == kKeptRank && kept.d[0] == x.d[0] && kept.d[1] == mParams.k,
        "output 'kept' must be [" << x.d[0] << ", " << mParams.k << "], got " << dimsToString(kept));
}

int32_t EvitSelectPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        validateNbInputs(in, nbInputs);
        validateNbOutputs(out, nbOutputs);
        validateInputDims(in[kInputX].desc.dims, in[kInputAttn].desc.dims);
        // The bounds of the optimization profile must admit the kernel too.
        validateInputDims(in[kInputX].min, in[kInputAttn].min);
        validateInputDims(in[kInputX].max, in[kInputAttn].max);
        return 0;
    }
    catch (...)
    {
        reportException(mRecorder, kName, "configurePlugin");
    }
    return -1;
}

int32_t EvitSelectPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    try
    {
        validateNbInputs(inputTypes, nbInputs);
        validateNbOutputs(outputTypes, nbOutputs);
        PLUGIN_VALIDATE(isFloatType(inputTypes[kInputX]),
            "input 'x' must be float32, float16 or bfloat16, got " << dataTypeName(inputTypes[kInputX]));
        PLUGIN_VALIDATE(inputTypes[kInputAttn] == DataType::kFLOAT,
            "input 'attn' must be float32 (scores are computed in float32), got "
                << dataTypeName(inputTypes[kInputAttn]));
        outputTypes[kOutputTokens] = inputTypes[kInputX];
        outputTypes[kOutputKept] = DataType::kINT64;
        return 0;
    }
    catch (...)
    {
        reportException(mRecorder, kName, "getOutputDataTypes");
    }
    return -1;
}

int32_t EvitSelectPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t nbShapeInputs, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept
{
    try
    {
        validateNbInputs(inputs, nbInputs);
        PLUGIN_VALIDATE(nbShapeInputs == 0, "expects no shape inputs, got " << nbShapeInputs);
        validateNbOutputs(outputs, nbOutputs);
        DimsExprs const& x = inputs[kInputX];
        DimsExprs const& attn = inputs[kInputAttn];
        PLUGIN_VALIDATE(x.nbDims == kTokensRank, "input 'x' must be [B, N, C], got rank " << x.nbDims);
        PLUGIN_VALIDATE(attn.nbDims == kAttnRank, "input 'attn' must be [B, H, N], got rank " << attn.nbDims);
        for (int32_t i : {0, 1})
        {
            int32_t const attnAxis = i == 0 ? 0 : 2; // batch and token axes of attn
            PLUGIN_VALIDATE(!(x.d[i]->isConstant() && attn.d[attnAxis]->isConstant()
                                && x.d[i]->getConstantValue() != attn.d[attnAxis]->getConstantValue()),
                (i == 0 ? "batch" : "token count") << " of 'x' and 'attn' differ");
        }
        if (x.d[1]->isConstant())
        {
            int64_t const numTokens = x.d[1]->getConstantValue();
            PLUGIN_VALIDATE(numTokens - mParams.numPrefix > mParams.k,
                "field 'k' = " << mParams.k << " must be < N - num_prefix = " << numTokens << " - "
                               << mParams.numPrefix);
        }

        DimsExprs& out = outputs[kOutputTokens];
        out.nbDims = kTokensRank;
        out.d[0] = x.d[0];
        out.d[1] = exprBuilder.constant(static_cast<int64_t>(mParams.numPrefix) + mParams.k + mParams.fuse);
        out.d[2] = x.d[2];

        DimsExprs& kept = outputs[kOutputKept];
        kept.nbDims = kKeptRank;
        kept.d[0] = x.d[0];
        kept.d[1] = exprBuilder.constant(mParams.k);
        PLUGIN_VALIDATE(out.d[1] != nullptr && kept.d[1] != nullptr, "IExprBuilder::constant returned null");
        return 0;
    }
    catch (...)
    {
        reportException(mRecorder, kName, "getOutputShapes");
    }
    return -1;
}

bool EvitSelectPlugin::supportsType(int32_t pos, DynamicPluginTensorDesc const* inOut) const
{
    DataType const type = inOut[pos].desc.type;
    switch (pos)
    {
    case kInputX: return isFloatType(type);
    case kInputAttn: return type == DataType::kFLOAT;
    case kNbInputs + kOutputTokens: return type == inOut[kInputX].desc.type;
    case kNbInputs + kOutputKept: return type == DataType::kINT64;
    default: return false;
    }
}

int32_t EvitSelectPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        validateNbInputs(in, nbInputs);
        validateNbOutputs(out, nbOutputs);
        validateInputDims(in[kInputX].dims, in[kInputAttn].dims);
        validateOutputDims(in[kInputX].dims, out[kOutputTokens].dims, out[kOutputKept].dims);
        return 0;
    }
    catch (...)
    {
        reportException(mRecorder, kName, "onShapeChange");
    }
    return -1;
}

int32_t EvitSelectPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    try
    {
        PLUGIN_VALIDATE(inputDesc != nullptr && outputDesc != nullptr && inputs != nullptr && outputs != nullptr,
            "null tensor descriptors or pointers");
        Dims const& x = inputDesc[kInputX].dims;
        Dims const& attn = inputDesc[kInputAttn].dims;
        validateInputDims(x, attn);
        validateOutputDims(x, outputDesc[kOutputTokens].dims, outputDesc[kOutputKept].dims);
        PLUGIN_VALIDATE(inputDesc[kInputAttn].type == DataType::kFLOAT,
            "input 'attn' must be float32, got " << dataTypeName(inputDesc[kInputAttn].type));
        PLUGIN_VALIDATE(
            outputDesc[kOutputTokens].type == inputDesc[kInputX].type, "output 'out' must have the type of 'x'");
        PLUGIN_VALIDATE(outputDesc[kOutputKept].type == DataType::kINT64, "output 'kept' must be int64");
        int32_t const dtype = toKernelFloatDtype(inputDesc[kInputX].type, "x");

        cudaError_t const status = tokcompileEvitSelect(inputs[kInputX], static_cast<float const*>(inputs[kInputAttn]),
            outputs[kOutputTokens], static_cast<int64_t*>(outputs[kOutputKept]), toInt32Extent(x.d[0], "batch"),
            toInt32Extent(attn.d[1], "heads"), toInt32Extent(x.d[1], "tokens"), toInt32Extent(x.d[2], "channels"),
            mParams.k, mParams.numPrefix, mParams.fuse, dtype, stream);
        PLUGIN_VALIDATE(status == cudaSuccess,
            "kernel launch failed: " << cudaGetErrorName(status) << " (" << cudaGetErrorString(status) << ")");
        return 0;
    }
    catch (...)
    {
        reportException(mRecorder, kName, "enqueue");
    }
    return -1;
}

EvitSelectPluginCreator::EvitSelectPluginCreator() noexcept
    : PluginCreatorBase({kFieldK, kFieldNumPrefix, kFieldFuse})
{
}

EvitSelectParams EvitSelectPluginCreator::parseFields(PluginFieldCollection const* fc)
{
    PLUGIN_VALIDATE(fc != nullptr, "no PluginFieldCollection");
    PLUGIN_VALIDATE(fc->nbFields == 0 || fc->fields != nullptr, "PluginFieldCollection has null fields");
    bool seenK = false;
    bool seenPrefix = false;
    bool seenFuse = false;
    int64_t k = 0;
    int64_t numPrefix = 0;
    int64_t fuse = 0;
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        PluginField const& field = fc->fields[i];
        PLUGIN_VALIDATE(field.name != nullptr, "field " << i << " has no name");
        if (std::strcmp(field.name, kFieldK) == 0)
        {
            k = readIntField(field);
            seenK = true;
        }
        else if (std::strcmp(field.name, kFieldNumPrefix) == 0)
        {
            numPrefix = readIntField(field);
            seenPrefix = true;
        }
        else if (std::strcmp(field.name, kFieldFuse) == 0)
        {
            fuse = readIntField(field);
            seenFuse = true;
        }
        else
        {
            PLUGIN_VALIDATE(
                isLookupAttribute(field.name), "unknown field '" << field.name << "' (fields: k, num_prefix, fuse)");
        }
    }
    PLUGIN_VALIDATE(seenK, "missing field 'k'");
    PLUGIN_VALIDATE(seenPrefix, "missing field 'num_prefix'");
    PLUGIN_VALIDATE(seenFuse, "missing field 'fuse'");
    PLUGIN_VALIDATE(k >= 1 && k <= std::numeric_limits<int32_t>::max(), "field 'k' must be >= 1, got " << k);
    PLUGIN_VALIDATE(numPrefix >= 0 && numPrefix <= std::numeric_limits<int32_t>::max(),
        "field 'num_prefix' must be >= 0, got " << numPrefix);
    PLUGIN_VALIDATE(fuse == 0 || fuse == 1, "field 'fuse' must be 0 or 1, got " << fuse);
    EvitSelectParams params;
    params.k = static_cast<int32_t>(k);
    params.numPrefix = static_cast<int32_t>(numPrefix);
    params.fuse = static_cast<int32_t>(fuse);
    return params;
}

IPluginV3* EvitSelectPluginCreator::createPlugin(
    char const* /*name*/, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept
{
    try
    {
        // Build and runtime phase alike: at runtime fc holds getFieldsToSerialize()'s fields.
        return std::make_unique<EvitSelectPlugin>(parseFields(fc)).release();
    }
    catch (...)
    {
        reportException(nullptr, EvitSelectPlugin::kName, "createPlugin");
    }
    return nullptr;
}

} // namespace plugin
} // namespace tokcompile

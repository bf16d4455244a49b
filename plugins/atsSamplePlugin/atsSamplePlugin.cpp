/*
 * AtsSample plugin glue: fields, shapes, types, validation, launch. No device code here; the
 * kernel is behind atsSampleKernel.h.
 */
#include "atsSamplePlugin/atsSamplePlugin.h"

#include "atsSamplePlugin/atsSampleKernel.h"

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

constexpr char const* kFieldNumSamples = "num_samples";

constexpr int32_t kAttnRank = 3;  // attn [B, H, n]
constexpr int32_t kValueRank = 4; // v [B, H, n, hd]
constexpr int32_t kValidRank = 2; // valid [B, n]
constexpr int32_t kRowsRank = 2;  // rows [B, n]
constexpr int32_t kCountRank = 1; // count [B]

bool isMaskType(DataType type) noexcept
{
    return type == DataType::kBOOL || type == DataType::kINT32;
}

int32_t toKernelMaskDtype(DataType type)
{
    switch (type)
    {
    case DataType::kBOOL: return TOKCOMPILE_BOOL;
    case DataType::kINT32: return TOKCOMPILE_INT32;
    default: break;
    }
    PLUGIN_VALIDATE(false, "input 'valid' must be bool (or int32 0/1), got " << dataTypeName(type));
    return -1;
}

} // namespace

AtsSamplePlugin::AtsSamplePlugin(AtsSampleParams const& params)
    : mParams(params)
{
    PLUGIN_VALIDATE(mParams.numSamples >= 1, "field 'num_samples' must be >= 1, got " << mParams.numSamples);
    initFields();
}

AtsSamplePlugin::AtsSamplePlugin(AtsSamplePlugin const& other)
    : PluginBase(other)
    , mParams(other.mParams)
{
    initFields();
}

void AtsSamplePlugin::initFields()
{
    // The fields point into this object, so every copy rebuilds them.
    setFields({PluginField(kFieldNumSamples, &mParams.numSamples, PluginFieldType::kINT32, 1)},
        std::string(kName) + "(num_samples=" + std::to_string(mParams.numSamples) + ")");
}

void AtsSamplePlugin::validateInputDims(Dims const& attn, Dims const& v, Dims const& valid) const
{
    PLUGIN_VALIDATE(attn.nbDims == kAttnRank, "input 'attn' must be [B, H, n], got " << dimsToString(attn));
    PLUGIN_VALIDATE(v.nbDims == kValueRank, "input 'v' must be [B, H, n, hd], got " << dimsToString(v));
    PLUGIN_VALIDATE(valid.nbDims == kValidRank, "input 'valid' must be [B, n], got " << dimsToString(valid));
    PLUGIN_VALIDATE(!knownAndDifferent(attn.d[0], v.d[0]) && !knownAndDifferent(attn.d[0], valid.d[0])
            && !knownAndDifferent(v.d[0], valid.d[0]),
        "batch of 'attn' " << dimsToString(attn) << ", 'v' " << dimsToString(v) << " and 'valid' "
                           << dimsToString(valid) << " differ");
    PLUGIN_VALIDATE(!knownAndDifferent(attn.d[1], v.d[1]),
        "heads of 'attn' " << dimsToString(attn) << " and 'v' " << dimsToString(v) << " differ");
    PLUGIN_VALIDATE(!knownAndDifferent(attn.d[2], v.d[2]) && !knownAndDifferent(attn.d[2], valid.d[1])
            && !knownAndDifferent(v.d[2], valid.d[1]),
        "token count of 'attn' " << dimsToString(attn) << ", 'v' " << dimsToString(v) << " and 'valid' "
                                 << dimsToString(valid) << " differ");
    PLUGIN_VALIDATE(attn.d[1] != 0, "input 'attn' has no heads: " << dimsToString(attn));
    PLUGIN_VALIDATE(attn.d[2] != 0, "input 'attn' has no tokens (CLS at least): " << dimsToString(attn));
    PLUGIN_VALIDATE(v.d[3] != 0, "input 'v' has an empty head dimension: " << dimsToString(v));
}

void AtsSamplePlugin::validateOutputDims(Dims const& attn, Dims const& rows, Dims const& count) const
{
    PLUGIN_VALIDATE(rows.nbDims == kRowsRank && rows.d[0] == attn.d[0] && rows.d[1] == attn.d[2],
        "output 'rows' must be [" << attn.d[0] << ", " << attn.d[2] << "], got " << dimsToString(rows));
    PLUGIN_VALIDATE(count.nbDims == kCountRank && count.d[0] == attn.d[0],
        "output 'count' must be [" << attn.d[0] << "], got " << dimsToString(count));
}

int32_t AtsSamplePlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        validateNbInputs(in, nbInputs);
        validateNbOutputs(out, nbOutputs);
        validateInputDims(in[kInputAttn].desc.dims, in[kInputV].desc.dims, in[kInputValid].desc.dims);
        validateInputDims(in[kInputAttn].min, in[kInputV].min, in[kInputValid].min);
        validateInputDims(in[kInputAttn].max, in[kInputV].max, in[kInputValid].max);
        return 0;
    }
    catch (...)
    {
        reportException(mRecorder, kName, "configurePlugin");
    }
    return -1;
}

int32_t AtsSamplePlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    try
    {
        validateNbInputs(inputTypes, nbInputs);
        validateNbOutputs(outputTypes, nbOutputs);
        PLUGIN_VALIDATE(inputTypes[kInputAttn] == DataType::kFLOAT,
            "input 'attn' must be float32, got " << dataTypeName(inputTypes[kInputAttn]));
        PLUGIN_VALIDATE(isFloatType(inputTypes[kInputV]),
            "input 'v' must be float32, float16 or bfloat16, got " << dataTypeName(inputTypes[kInputV]));
        PLUGIN_VALIDATE(isMaskType(inputTypes[kInputValid]),
            "input 'valid' must be bool (or int32 0/1), got " << dataTypeName(inputTypes[kInputValid]));
        outputTypes[kOutputRows] = DataType::kINT64;
        outputTypes[kOutputCount] = DataType::kINT64;
        return 0;
    }
    catch (...)
    {
        reportException(mRecorder, kName, "getOutputDataTypes");
    }
    return -1;
}

int32_t AtsSamplePlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t nbShapeInputs, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& /*exprBuilder*/) noexcept
{
    try
    {
        validateNbInputs(inputs, nbInputs);
        PLUGIN_VALIDATE(nbShapeInputs == 0, "expects no shape inputs, got " << nbShapeInputs);
        validateNbOutputs(outputs, nbOutputs);
        DimsExprs const& attn = inputs[kInputAttn];
        DimsExprs const& v = inputs[kInputV];
        DimsExprs const& valid = inputs[kInputValid];
        PLUGIN_VALIDATE(attn.nbDims == kAttnRank, "input 'attn' must be [B, H, n], got rank " << attn.nbDims);
        PLUGIN_VALIDATE(v.nbDims == kValueRank, "input 'v' must be [B, H, n, hd], got rank " << v.nbDims);
        PLUGIN_VALIDATE(valid.nbDims == kValidRank, "input 'valid' must be [B, n], got rank " << valid.nbDims);
        auto differ = [](IDimensionExpr const* a, IDimensionExpr const* b) {
            return a->isConstant() && b->isConstant() && a->getConstantValue() != b->getConstantValue();
        };
        PLUGIN_VALIDATE(!differ(attn.d[0], v.d[0]) && !differ(attn.d[0], valid.d[0]), "batch of the inputs differs");
        PLUGIN_VALIDATE(!differ(attn.d[1], v.d[1]), "heads of 'attn' and 'v' differ");
        PLUGIN_VALIDATE(
            !differ(attn.d[2], v.d[2]) && !differ(attn.d[2], valid.d[1]), "token count of the inputs differs");

        // Static in the input shapes: rows is padded to n, count says how many are real.
        DimsExprs& rows = outputs[kOutputRows];
        rows.nbDims = kRowsRank;
        rows.d[0] = attn.d[0];
        rows.d[1] = attn.d[2];
        DimsExprs& count = outputs[kOutputCount];
        count.nbDims = kCountRank;
        count.d[0] = attn.d[0];
        return 0;
    }
    catch (...)
    {
        reportException(mRecorder, kName, "getOutputShapes");
    }
    return -1;
}

bool AtsSamplePlugin::supportsType(int32_t pos, DynamicPluginTensorDesc const* inOut) const
{
    DataType const type = inOut[pos].desc.type;
    switch (pos)
    {
    case kInputAttn: return type == DataType::kFLOAT;
    case kInputV: return isFloatType(type);
    case kInputValid: return isMaskType(type);
    case kNbInputs + kOutputRows:
    case kNbInputs + kOutputCount: return type == DataType::kINT64;
    default: return false;
    }
}

int32_t AtsSamplePlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        validateNbInputs(in, nbInputs);
        validateNbOutputs(out, nbOutputs);
        validateInputDims(in[kInputAttn].dims, in[kInputV].dims, in[kInputValid].dims);
        validateOutputDims(in[kInputAttn].dims, out[kOutputRows].dims, out[kOutputCount].dims);
        return 0;
    }
    catch (...)
    {
        reportException(mRecorder, kName, "onShapeChange");
    }
    return -1;
}

int32_t AtsSamplePlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    try
    {
        PLUGIN_VALIDATE(inputDesc != nullptr && outputDesc != nullptr && inputs != nullptr && outputs != nullptr,
            "null tensor descriptors or pointers");
        Dims const& attn = inputDesc[kInputAttn].dims;
        Dims const& v = inputDesc[kInputV].dims;
        validateInputDims(attn, v, inputDesc[kInputValid].dims);
        validateOutputDims(attn, outputDesc[kOutputRows].dims, outputDesc[kOutputCount].dims);
        PLUGIN_VALIDATE(inputDesc[kInputAttn].type == DataType::kFLOAT,
            "input 'attn' must be float32, got " << dataTypeName(inputDesc[kInputAttn].type));
        PLUGIN_VALIDATE(
            outputDesc[kOutputRows].type == DataType::kINT64 && outputDesc[kOutputCount].type == DataType::kINT64,
            "outputs 'rows' and 'count' must be int64");
        int32_t const vDtype = toKernelFloatDtype(inputDesc[kInputV].type, "v");
        int32_t const validDtype = toKernelMaskDtype(inputDesc[kInputValid].type);

        cudaError_t const status = tokcompileAtsSample(static_cast<float const*>(inputs[kInputAttn]), inputs[kInputV],
            inputs[kInputValid], static_cast<int64_t*>(outputs[kOutputRows]),
            static_cast<int64_t*>(outputs[kOutputCount]), toInt32Extent(attn.d[0], "batch"),
            toInt32Extent(attn.d[1], "heads"), toInt32Extent(attn.d[2], "tokens"), toInt32Extent(v.d[3], "head_dim"),
            mParams.numSamples, vDtype, validDtype, stream);
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

AtsSamplePluginCreator::AtsSamplePluginCreator() noexcept
    : PluginCreatorBase({kFieldNumSamples})
{
}

AtsSampleParams AtsSamplePluginCreator::parseFields(PluginFieldCollection const* fc)
{
    PLUGIN_VALIDATE(fc != nullptr, "no PluginFieldCollection");
    PLUGIN_VALIDATE(fc->nbFields == 0 || fc->fields != nullptr, "PluginFieldCollection has null fields");
    bool seen = false;
    int64_t numSamples = 0;
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        PluginField const& field = fc->fields[i];
        PLUGIN_VALIDATE(field.name != nullptr, "field " << i << " has no name");
        if (std::strcmp(field.name, kFieldNumSamples) == 0)
        {
            numSamples = readIntField(field);
            seen = true;
        }
        else
        {
            PLUGIN_VALIDATE(
                isLookupAttribute(field.name), "unknown field '" << field.name << "' (fields: num_samples)");
        }
    }
    PLUGIN_VALIDATE(seen, "missing field 'num_samples'");
    PLUGIN_VALIDATE(numSamples >= 1 && numSamples <= std::numeric_limits<int32_t>::max(),
        "field 'num_samples' must be >= 1, got " << numSamples);
    AtsSampleParams params;
    params.numSamples = static_cast<int32_t>(numSamples);
    return params;
}

IPluginV3* AtsSamplePluginCreator::createPlugin(
    char const* /*name*/, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept
{
    try
    {
        // Build and runtime phase alike: at runtime fc holds getFieldsToSerialize()'s fields.
        return std::make_unique<AtsSamplePlugin>(parseFields(fc)).release();
    }
    catch (...)
    {
        reportException(nullptr, AtsSamplePlugin::kName, "createPlugin");
    }
    return nullptr;
}

} // namespace plugin
} // namespace tokcompile

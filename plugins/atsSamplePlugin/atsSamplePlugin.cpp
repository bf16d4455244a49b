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

bool isValueType(DataType type) noexcept
{
    return type == DataType::kFLOAT || type == DataType::kHALF || type == DataType::kBF16;
}

bool isMaskType(DataType type) noexcept
{
    return type == DataType::kBOOL || type == DataType::kINT32;
}

int32_t toKernelValueDtype(DataType type)
{
    switch (type)
    {
    case DataType::kFLOAT: return TOKCOMPILE_FLOAT32;
    case DataType::kHALF: return TOKCOMPILE_FLOAT16;
    case DataType::kBF16: return TOKCOMPILE_BFLOAT16;
    default: break;
    }
    PLUGIN_VALIDATE(false, "input 'v' must be float32, float16 or bfloat16, got " << dataTypeName(type));
    return -1;
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

int32_t toInt32Extent(int64_t extent, char const* what)
{
    PLUGIN_VALIDATE(
        extent >= 0 && extent <= std::numeric_limits<int32_t>::max(), what << " must be in [0, 2^31), got " << extent);
    return static_cast<int32_t>(extent);
}

} // namespace

AtsSamplePlugin::AtsSamplePlugin(AtsSampleParams const& params)
    : mParams(params)
{
    PLUGIN_VALIDATE(mParams.numSamples >= 1, "field 'num_samples' must be >= 1, got " << mParams.numSamples);
    initFields();
}

AtsSamplePlugin::AtsSamplePlugin(AtsSamplePlugin const& other)
    : mParams(other.mParams)
    , mRecorder(other.mRecorder)
{
    initFields();
}

void AtsSamplePlugin::initFields()
{
    // The collection points into this object, so every copy rebuilds it.
    mFields.clear();
    mFields.emplace_back(kFieldNumSamples, &mParams.numSamples, PluginFieldType::kINT32, 1);
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
    mDescription = std::string(kName) + "(num_samples=" + std::to_string(mParams.numSamples) + ")";
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

IPluginCapability* AtsSamplePlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    try
    {
        switch (type)
        {
        case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
        case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
        case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        }
        PLUGIN_VALIDATE(false, "unknown PluginCapabilityType " << static_cast<int32_t>(type));
    }
    catch (...)
    {
        reportException(mRecorder, kName, "getCapabilityInterface");
    }
    return nullptr;
}

IPluginV3* AtsSamplePlugin::clone() noexcept
{
    try
    {
        return std::make_unique<AtsSamplePlugin>(*this).release();
    }
    catch (...)
    {
        reportException(mRecorder, kName, "clone");
    }
    return nullptr;
}

char const* AtsSamplePlugin::getPluginName() const noexcept
{
    return kName;
}

char const* AtsSamplePlugin::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* AtsSamplePlugin::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

int32_t AtsSamplePlugin::getNbOutputs() const noexcept
{
    return kNbOutputs;
}

int32_t AtsSamplePlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        PLUGIN_VALIDATE(in != nullptr && nbInputs == kNbInputs, "expects " << kNbInputs << " inputs, got " << nbInputs);
        PLUGIN_VALIDATE(
            out != nullptr && nbOutputs == kNbOutputs, "expects " << kNbOutputs << " outputs, got " << nbOutputs);
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
        PLUGIN_VALIDATE(
            inputTypes != nullptr && nbInputs == kNbInputs, "expects " << kNbInputs << " inputs, got " << nbInputs);
        PLUGIN_VALIDATE(outputTypes != nullptr && nbOutputs == kNbOutputs,
            "expects " << kNbOutputs << " outputs, got " << nbOutputs);
        PLUGIN_VALIDATE(inputTypes[kInputAttn] == DataType::kFLOAT,
            "input 'attn' must be float32, got " << dataTypeName(inputTypes[kInputAttn]));
        PLUGIN_VALIDATE(isValueType(inputTypes[kInputV]),
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
        PLUGIN_VALIDATE(
            inputs != nullptr && nbInputs == kNbInputs, "expects " << kNbInputs << " inputs, got " << nbInputs);
        PLUGIN_VALIDATE(nbShapeInputs == 0, "expects no shape inputs, got " << nbShapeInputs);
        PLUGIN_VALIDATE(
            outputs != nullptr && nbOutputs == kNbOutputs, "expects " << kNbOutputs << " outputs, got " << nbOutputs);
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

bool AtsSamplePlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    try
    {
        PLUGIN_VALIDATE(inOut != nullptr && nbInputs == kNbInputs && nbOutputs == kNbOutputs,
            "expects " << kNbInputs << " inputs and " << kNbOutputs << " outputs, got " << nbInputs << " and "
                       << nbOutputs);
        PLUGIN_VALIDATE(pos >= 0 && pos < kNbInputs + kNbOutputs, "position " << pos << " out of range");
        PluginTensorDesc const& desc = inOut[pos].desc;
        if (desc.format != TensorFormat::kLINEAR)
        {
            return false;
        }
        switch (pos)
        {
        case kInputAttn: return desc.type == DataType::kFLOAT;
        case kInputV: return isValueType(desc.type);
        case kInputValid: return isMaskType(desc.type);
        case kNbInputs + kOutputRows:
        case kNbInputs + kOutputCount: return desc.type == DataType::kINT64;
        default: return false;
        }
    }
    catch (...)
    {
        reportException(mRecorder, kName, "supportsFormatCombination");
    }
    return false;
}

size_t AtsSamplePlugin::getWorkspaceSize(DynamicPluginTensorDesc const* /*inputs*/, int32_t nbInputs,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t nbOutputs) const noexcept
{
    try
    {
        PLUGIN_VALIDATE(nbInputs == kNbInputs && nbOutputs == kNbOutputs,
            "expects " << kNbInputs << " inputs and " << kNbOutputs << " outputs, got " << nbInputs << " and "
                       << nbOutputs);
        return 0; // everything lives in shared memory
    }
    catch (...)
    {
        reportException(mRecorder, kName, "getWorkspaceSize");
    }
    return 0;
}

char const* AtsSamplePlugin::getTimingCacheID() noexcept
{
    return mDescription.c_str();
}

char const* AtsSamplePlugin::getMetadataString() noexcept
{
    return mDescription.c_str();
}

int32_t AtsSamplePlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        PLUGIN_VALIDATE(in != nullptr && nbInputs == kNbInputs, "expects " << kNbInputs << " inputs, got " << nbInputs);
        PLUGIN_VALIDATE(
            out != nullptr && nbOutputs == kNbOutputs, "expects " << kNbOutputs << " outputs, got " << nbOutputs);
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
        int32_t const vDtype = toKernelValueDtype(inputDesc[kInputV].type);
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

IPluginV3* AtsSamplePlugin::attachToContext(IPluginResourceContext* context) noexcept
{
    try
    {
        auto plugin = std::make_unique<AtsSamplePlugin>(*this);
        plugin->mRecorder = context != nullptr ? context->getErrorRecorder() : nullptr;
        return plugin.release();
    }
    catch (...)
    {
        reportException(mRecorder, kName, "attachToContext");
    }
    return nullptr;
}

PluginFieldCollection const* AtsSamplePlugin::getFieldsToSerialize() noexcept
{
    try
    {
        PLUGIN_VALIDATE(mFieldCollection.fields == mFields.data(), "serialization fields out of date");
        return &mFieldCollection;
    }
    catch (...)
    {
        reportException(mRecorder, kName, "getFieldsToSerialize");
    }
    return nullptr;
}

AtsSamplePluginCreator::AtsSamplePluginCreator() noexcept
{
    mFieldNames[0] = PluginField(kFieldNumSamples, nullptr, PluginFieldType::kINT32, 1);
    mFieldCollection.nbFields = kNbFields;
    mFieldCollection.fields = mFieldNames;
}

char const* AtsSamplePluginCreator::getPluginName() const noexcept
{
    return AtsSamplePlugin::kName;
}

char const* AtsSamplePluginCreator::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* AtsSamplePluginCreator::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

PluginFieldCollection const* AtsSamplePluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
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

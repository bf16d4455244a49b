/*
 * The IPluginV3 members that do not depend on the op, written once for every tokcompile plugin.
 *
 * PluginBase<Derived> (CRTP) implements getCapabilityInterface, clone, the name/version/namespace
 * getters, getNbOutputs, getWorkspaceSize (none), getTimingCacheID / getMetadataString,
 * supportsFormatCombination up to the per-tensor type, attachToContext and getFieldsToSerialize.
 * Derived provides
 *   - kName, kNbInputs, kNbOutputs (static constexpr);
 *   - a copy constructor that copies PluginBase and calls setFields again (the serialization
 *     fields point into the object), as every other constructor does;
 *   - bool supportsType(int32_t pos, DynamicPluginTensorDesc const* inOut) const: whether tensor
 *     pos (inputs, then outputs; its format already checked to be kLINEAR) may have the type
 *     inOut[pos].desc.type; may be private with PluginBase<Derived> a friend;
 *   - configurePlugin, getOutputDataTypes, getOutputShapes, onShapeChange and enqueue.
 *
 * PluginCreatorBase<Plugin> implements the creator's name/version/namespace and field list
 * (Plugin::kNbFields int32 scalars); the creator implements createPlugin and parses the fields.
 *
 * The error policy is the one of tokcompilePluginCommon.h: every entry point is noexcept; those
 * that can fail validate with PLUGIN_VALIDATE inside try/catch and report with the plugin's name.
 */
#ifndef TOKCOMPILE_PLUGIN_BASE_H
#define TOKCOMPILE_PLUGIN_BASE_H

#include "common/tokcompilePluginCommon.h"

#include <NvInferRuntime.h>

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace tokcompile
{
namespace plugin
{

template <typename Derived>
class PluginBase : public nvinfer1::IPluginV3,
                   public nvinfer1::IPluginV3OneCore,
                   public nvinfer1::IPluginV3OneBuild,
                   public nvinfer1::IPluginV3OneRuntime
{
public:
    PluginBase& operator=(PluginBase const&) = delete;
    ~PluginBase() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override
    {
        try
        {
            switch (type)
            {
            case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
            case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
            case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
            }
            PLUGIN_VALIDATE(false, "unknown PluginCapabilityType " << static_cast<int32_t>(type));
        }
        catch (...)
        {
            reportException(mRecorder, Derived::kName, "getCapabilityInterface");
        }
        return nullptr;
    }

    nvinfer1::IPluginV3* clone() noexcept override
    {
        try
        {
            return std::make_unique<Derived>(derived()).release();
        }
        catch (...)
        {
            reportException(mRecorder, Derived::kName, "clone");
        }
        return nullptr;
    }

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override
    {
        return Derived::kName;
    }

    char const* getPluginVersion() const noexcept override
    {
        return kPluginVersion;
    }

    char const* getPluginNamespace() const noexcept override
    {
        return kPluginNamespace;
    }

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override
    {
        return Derived::kNbOutputs;
    }

    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override
    {
        try
        {
            PLUGIN_VALIDATE(inOut != nullptr && nbInputs == Derived::kNbInputs && nbOutputs == Derived::kNbOutputs,
                "expects " << Derived::kNbInputs << " inputs and " << Derived::kNbOutputs << " outputs, got "
                           << nbInputs << " and " << nbOutputs);
            PLUGIN_VALIDATE(
                pos >= 0 && pos < Derived::kNbInputs + Derived::kNbOutputs, "position " << pos << " out of range");
            return inOut[pos].desc.format == nvinfer1::TensorFormat::kLINEAR && derived().supportsType(pos, inOut);
        }
        catch (...)
        {
            reportException(mRecorder, Derived::kName, "supportsFormatCombination");
        }
        return false;
    }

    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* /*inputs*/, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* /*outputs*/, int32_t nbOutputs) const noexcept override
    {
        try
        {
            PLUGIN_VALIDATE(nbInputs == Derived::kNbInputs && nbOutputs == Derived::kNbOutputs,
                "expects " << Derived::kNbInputs << " inputs and " << Derived::kNbOutputs << " outputs, got "
                           << nbInputs << " and " << nbOutputs);
            return 0; // no scratch memory: the kernels keep everything in shared memory
        }
        catch (...)
        {
            reportException(mRecorder, Derived::kName, "getWorkspaceSize");
        }
        return 0;
    }

    char const* getTimingCacheID() noexcept override
    {
        return mDescription.c_str();
    }

    char const* getMetadataString() noexcept override
    {
        return mDescription.c_str();
    }

    // IPluginV3OneRuntime
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override
    {
        try
        {
            auto plugin = std::make_unique<Derived>(derived());
            plugin->mRecorder = context != nullptr ? context->getErrorRecorder() : nullptr;
            return plugin.release();
        }
        catch (...)
        {
            reportException(mRecorder, Derived::kName, "attachToContext");
        }
        return nullptr;
    }

    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override
    {
        try
        {
            PLUGIN_VALIDATE(mFieldCollection.fields == mFields.data(), "serialization fields out of date");
            return &mFieldCollection;
        }
        catch (...)
        {
            reportException(mRecorder, Derived::kName, "getFieldsToSerialize");
        }
        return nullptr;
    }

protected:
    PluginBase() = default;

    //! The error recorder only: the fields point into the copied object, Derived rebuilds them.
    PluginBase(PluginBase const& other)
        : mRecorder(other.mRecorder)
    {
    }

    //! Serialization fields (pointing into Derived's parameters) and the description returned as
    //! timing-cache id and metadata. Every constructor of Derived calls it, copies included.
    void setFields(std::vector<nvinfer1::PluginField> fields, std::string description)
    {
        mFields = std::move(fields);
        mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
        mFieldCollection.fields = mFields.data();
        mDescription = std::move(description);
    }

    //! "expects N inputs, got M" unless tensors is non-null and nbInputs == Derived::kNbInputs.
    static void validateNbInputs(void const* tensors, int32_t nbInputs)
    {
        PLUGIN_VALIDATE(tensors != nullptr && nbInputs == Derived::kNbInputs,
            "expects " << Derived::kNbInputs << " inputs, got " << nbInputs);
    }

    //! "expects N outputs, got M" unless tensors is non-null and nbOutputs == Derived::kNbOutputs.
    static void validateNbOutputs(void const* tensors, int32_t nbOutputs)
    {
        PLUGIN_VALIDATE(tensors != nullptr && nbOutputs == Derived::kNbOutputs,
            "expects " << Derived::kNbOutputs << " outputs, got " << nbOutputs);
    }

    nvinfer1::IErrorRecorder* mRecorder{nullptr}; // set by attachToContext; owned by the context

private:
    Derived const& derived() const noexcept
    {
        return static_cast<Derived const&>(*this);
    }

    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
    std::string mDescription; // "<Name>(<field>=<value>, ...)": timing-cache id and metadata
};

template <typename Plugin>
class PluginCreatorBase : public nvinfer1::IPluginCreatorV3One
{
public:
    char const* getPluginName() const noexcept override
    {
        return Plugin::kName;
    }

    char const* getPluginVersion() const noexcept override
    {
        return kPluginVersion;
    }

    char const* getPluginNamespace() const noexcept override
    {
        return kPluginNamespace;
    }

    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override
    {
        return &mFieldCollection;
    }

protected:
    //! The plugin's fields, in serialization order; each an int32 scalar.
    explicit PluginCreatorBase(std::array<char const*, Plugin::kNbFields> const& fieldNames) noexcept
    {
        for (int32_t i = 0; i < Plugin::kNbFields; ++i)
        {
            // data == nullptr: these describe the fields; createPlugin receives the values.
            mFieldNames[i] = nvinfer1::PluginField(fieldNames[i], nullptr, nvinfer1::PluginFieldType::kINT32, 1);
        }
        mFieldCollection.nbFields = Plugin::kNbFields;
        mFieldCollection.fields = mFieldNames.data();
    }

private:
    std::array<nvinfer1::PluginField, Plugin::kNbFields> mFieldNames;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

} // namespace plugin
} // namespace tokcompile

#endif // TOKCOMPILE_PLUGIN_BASE_H

/*
 * Error reporting, logger hand-over and field parsing for the tokcompile plugins.
 */
#include "common/tokcompilePluginCommon.h"

#include "common/tokcompileKernelApi.h"

#include <atomic>
#include <cstring>
#include <exception>
#include <iostream>
#include <limits>

namespace tokcompile
{
namespace plugin
{
namespace
{

// Set once by TensorRT (dynamic variant: setLoggerFinder entry point); read from any thread.
std::atomic<nvinfer1::ILoggerFinder*> gLoggerFinder{nullptr};

std::string formatMessage(char const* pluginName, char const* where, char const* message)
{
    std::string text = std::string(kPluginNamespace) + "::" + (pluginName != nullptr ? pluginName : "?")
        + "::" + (where != nullptr ? where : "?") + ": " + (message != nullptr ? message : "unknown error");
    return text;
}

} // namespace

void throwValidationError(char const* condition, std::string const& message, char const* file, int line)
{
    // The message is the user-facing part; the failed condition and place help a bug report.
    char const* base = file != nullptr ? std::strrchr(file, '/') : nullptr;
    std::ostringstream text;
    text << message << " [check '" << condition << "' at " << (base != nullptr ? base + 1 : file) << ":" << line << "]";
    throw PluginError(text.str());
}

void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept
{
    nvinfer1::ILoggerFinder* expected = nullptr;
    // Keep the first finder: TensorRT hands the same one to every load of the library.
    gLoggerFinder.compare_exchange_strong(expected, finder);
}

void reportError(nvinfer1::IErrorRecorder* recorder, nvinfer1::ErrorCode code, char const* pluginName,
    char const* where, char const* message) noexcept
{
    try
    {
        std::string const text = formatMessage(pluginName, where, message);
        if (recorder != nullptr)
        {
            recorder->reportError(code, text.c_str());
            return;
        }
        nvinfer1::ILoggerFinder* finder = gLoggerFinder.load();
        nvinfer1::ILogger* logger = finder != nullptr ? finder->findLogger() : nullptr;
        if (logger != nullptr)
        {
            logger->log(nvinfer1::ILogger::Severity::kERROR, text.c_str());
            return;
        }
        std::cerr << "[tokcompile plugins] ERROR: " << text << std::endl;
    }
    catch (...)
    {
        // Out of memory while formatting: nothing sensible is left to do, and we must not throw.
    }
}

void reportException(nvinfer1::IErrorRecorder* recorder, char const* pluginName, char const* where) noexcept
{
    try
    {
        throw;
    }
    catch (PluginError const& e)
    {
        reportError(recorder, nvinfer1::ErrorCode::kINVALID_ARGUMENT, pluginName, where, e.what());
    }
    catch (std::exception const& e)
    {
        reportError(recorder, nvinfer1::ErrorCode::kINTERNAL_ERROR, pluginName, where, e.what());
    }
    catch (...)
    {
        reportError(recorder, nvinfer1::ErrorCode::kUNSPECIFIED_ERROR, pluginName, where, "unknown exception");
    }
}

int64_t readIntField(nvinfer1::PluginField const& field)
{
    char const* name = field.name != nullptr ? field.name : "?";
    PLUGIN_VALIDATE(field.data != nullptr, "field '" << name << "' has no data");
    PLUGIN_VALIDATE(
        field.length == 1, "field '" << name << "' must be a scalar (length 1), got length " << field.length);
    switch (field.type)
    {
    case nvinfer1::PluginFieldType::kINT8: return *static_cast<int8_t const*>(field.data);
    case nvinfer1::PluginFieldType::kINT16: return *static_cast<int16_t const*>(field.data);
    case nvinfer1::PluginFieldType::kINT32: return *static_cast<int32_t const*>(field.data);
    case nvinfer1::PluginFieldType::kINT64: return *static_cast<int64_t const*>(field.data);
    default: break;
    }
    PLUGIN_VALIDATE(false,
        "field '" << name << "' must be an integer (kINT32 or kINT64), got PluginFieldType "
                  << static_cast<int32_t>(field.type));
    return 0;
}

bool isLookupAttribute(char const* fieldName) noexcept
{
    return fieldName != nullptr
        && (std::strcmp(fieldName, "plugin_namespace") == 0 || std::strcmp(fieldName, "plugin_version") == 0);
}

char const* dataTypeName(nvinfer1::DataType type) noexcept
{
    switch (type)
    {
    case nvinfer1::DataType::kFLOAT: return "float32";
    case nvinfer1::DataType::kHALF: return "float16";
    case nvinfer1::DataType::kBF16: return "bfloat16";
    case nvinfer1::DataType::kINT8: return "int8";
    case nvinfer1::DataType::kINT32: return "int32";
    case nvinfer1::DataType::kINT64: return "int64";
    case nvinfer1::DataType::kBOOL: return "bool";
    case nvinfer1::DataType::kUINT8: return "uint8";
    default: return "other";
    }
}

bool isFloatType(nvinfer1::DataType type) noexcept
{
    return type == nvinfer1::DataType::kFLOAT || type == nvinfer1::DataType::kHALF
        || type == nvinfer1::DataType::kBF16;
}

int32_t toKernelFloatDtype(nvinfer1::DataType type, char const* input)
{
    switch (type)
    {
    case nvinfer1::DataType::kFLOAT: return TOKCOMPILE_FLOAT32;
    case nvinfer1::DataType::kHALF: return TOKCOMPILE_FLOAT16;
    case nvinfer1::DataType::kBF16: return TOKCOMPILE_BFLOAT16;
    default: break;
    }
    PLUGIN_VALIDATE(false, "input '" << input << "' must be float32, float16 or bfloat16, got " << dataTypeName(type));
    return -1;
}

int32_t toInt32Extent(int64_t extent, char const* what)
{
    PLUGIN_VALIDATE(
        extent >= 0 && extent <= std::numeric_limits<int32_t>::max(), what << " must be in [0, 2^31), got " << extent);
    return static_cast<int32_t>(extent);
}

std::string dimsToString(nvinfer1::Dims const& dims)
{
    std::ostringstream text;
    text << "[";
    for (int32_t i = 0; i < dims.nbDims; ++i)
    {
        text << (i > 0 ? ", " : "") << dims.d[i];
    }
    text << "]";
    return text.str();
}

} // namespace plugin
} // namespace tokcompile

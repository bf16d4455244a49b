/*
 * Glue shared by the tokcompile TensorRT plugins: identity constants, input validation that
 * throws (PLUGIN_VALIDATE), error reporting that never aborts, and plugin-field parsing.
 *
 * Error policy (NVIDIA/TensorRT plugin/ style): every plugin entry point is noexcept and wraps
 * its body in try/catch; a failed check throws PluginError with a message naming the plugin, the
 * entry point and the offending value; the catch reports it (the execution context's error
 * recorder when attached, else the logger handed over through setLoggerFinder, else std::cerr)
 * and returns the API's failure value. Nothing calls assert() or abort().
 */
#ifndef TOKCOMPILE_PLUGIN_COMMON_H
#define TOKCOMPILE_PLUGIN_COMMON_H

#include <NvInferRuntime.h>

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>

namespace tokcompile
{
namespace plugin
{

//! Plugin namespace and version; the ONNX nodes carry the same values as the attributes
//! plugin_namespace / plugin_version (tokcompile/_defaults.py: PLUGIN_NAMESPACE, PLUGIN_VERSION).
constexpr char const* kPluginNamespace = "tokcompile";
constexpr char const* kPluginVersion = "1";

//! A failed validation or an internal failure inside a plugin entry point.
class PluginError : public std::runtime_error
{
public:
    explicit PluginError(std::string const& message)
        : std::runtime_error(message)
    {
    }
};

[[noreturn]] void throwValidationError(char const* condition, std::string const& message, char const* file, int line);

} // namespace plugin
} // namespace tokcompile

//! Throws PluginError(msg) when cond is false. msg may stream values: "got " << k.
#define PLUGIN_VALIDATE(cond, msg)                                                                                     \
    do                                                                                                                 \
    {                                                                                                                  \
        if (!(cond))                                                                                                   \
        {                                                                                                              \
            std::ostringstream tokcompileValidateStream_;                                                              \
            tokcompileValidateStream_ << msg;                                                                          \
            ::tokcompile::plugin::throwValidationError(#cond, tokcompileValidateStream_.str(), __FILE__, __LINE__);    \
        }                                                                                                              \
    } while (0)

namespace tokcompile
{
namespace plugin
{

//! Reports an error from plugin `pluginName`, entry point `where`. Never throws.
//! recorder may be null (build phase, or a plugin not attached to an execution context).
void reportError(nvinfer1::IErrorRecorder* recorder, nvinfer1::ErrorCode code, char const* pluginName,
    char const* where, char const* message) noexcept;

//! Same as reportError for an exception caught in an entry point; unknown exceptions included.
void reportException(nvinfer1::IErrorRecorder* recorder, char const* pluginName, char const* where) noexcept;

//! Logger finder handed over by TensorRT through the dynamic library's setLoggerFinder.
void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;

//! Scalar integer attribute of a PluginField: kINT8/kINT16/kINT32/kINT64, length 1. The ONNX
//! parser passes ONNX INT attributes as kINT32; Python callers often build kINT64 fields.
int64_t readIntField(nvinfer1::PluginField const& field);

//! True for the two attributes every tokcompile ONNX node carries for TensorRT's plugin lookup;
//! they are not plugin fields and are ignored if a caller passes them anyway.
bool isLookupAttribute(char const* fieldName) noexcept;

//! Human-readable name of a DataType, for messages.
char const* dataTypeName(nvinfer1::DataType type) noexcept;

//! float32, float16 or bfloat16: the types of the kernels' token / value inputs.
bool isFloatType(nvinfer1::DataType type) noexcept;

//! The launchers' TokcompileDtype of a float input named `input`; throws for other types.
int32_t toKernelFloatDtype(nvinfer1::DataType type, char const* input);

//! An extent as the launchers' int32; throws unless it is in [0, 2^31). `what` names it.
int32_t toInt32Extent(int64_t extent, char const* what);

//! "[2, -1, 384]", for messages.
std::string dimsToString(nvinfer1::Dims const& dims);

//! True when both extents are known (not -1) and differ.
inline bool knownAndDifferent(int64_t a, int64_t b) noexcept
{
    return a >= 0 && b >= 0 && a != b;
}

} // namespace plugin
} // namespace tokcompile

#endif // TOKCOMPILE_PLUGIN_COMMON_H

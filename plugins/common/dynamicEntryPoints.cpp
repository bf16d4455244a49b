/*
 * Entry points of libtokcompile_plugins_dynamic.so, the library TensorRT loads itself:
 * IPluginRegistry::loadLibrary, `trtexec --dynamicPlugins`, and plugin libraries serialized into
 * version-compatible engines (IBuilderConfig::setPluginsToSerialize). TensorRT looks up
 *
 *     extern "C" IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
 *     extern "C" void setLoggerFinder(ILoggerFinder* finder);
 *
 * (signatures as in TensorRT's samples/trtexec README and plugin/vc/vfcCommon.h) and registers
 * the creators itself (each reports the namespace "tokcompile"). This variant never
 * registers anything on load and references no TensorRT symbol, so it links without libnvinfer
 * (-Wl,--no-undefined) and also runs under the lean runtime.
 */
#include "common/tokcompileCreators.h"
#include "common/tokcompilePluginCommon.h"

#include <NvInferRuntime.h>

// TENSORRTAPI exports only when TensorRT itself is built; this library exports these two names
// (and nothing else, exports_dynamic.map) on its own.
#define TOKCOMPILE_PLUGIN_EXPORT __attribute__((visibility("default")))

extern "C" TOKCOMPILE_PLUGIN_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    return tokcompile::plugin::pluginCreators(nbCreators);
}

extern "C" TOKCOMPILE_PLUGIN_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    tokcompile::plugin::setLoggerFinder(finder);
}

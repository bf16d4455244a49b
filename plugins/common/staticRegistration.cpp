/*
 * Self-registration (libtokcompile_plugins.so only): loading the library registers its creators
 * with TensorRT's global plugin registry under the namespace "tokcompile". This is what Python
 * (ctypes.CDLL), `polygraphy --plugins` and `trtexec --staticPlugins` rely on.
 *
 * REGISTER_TENSORRT_PLUGIN is not used: its PluginRegistrar registers with the namespace "", and
 * the ONNX nodes look the plugins up with plugin_namespace="tokcompile".
 *
 * When the build found libnvinfer, the library links it and calls getPluginRegistry() directly.
 * A headers-only build (no libnvinfer at link time) looks the function up at load time instead:
 * in the global scope (executables linked with TensorRT, RTLD_GLOBAL loads), else in an already
 * loaded libnvinfer (Python's tensorrt package loads it RTLD_LOCAL), via dlopen(RTLD_NOLOAD), which
 * never loads a second copy. Either way, a missing registry is reported, never a crash.
 */
#include "common/tokcompileCreators.h"
#include "common/tokcompilePluginCommon.h"

#include <NvInferRuntime.h>

#if !TOKCOMPILE_LINKED_NVINFER
#include <dlfcn.h>

#include <string>
#endif

namespace tokcompile
{
namespace plugin
{
namespace
{

nvinfer1::IPluginRegistry* findPluginRegistry()
{
#if TOKCOMPILE_LINKED_NVINFER
    return getPluginRegistry();
#else
    using GetPluginRegistryFn = nvinfer1::IPluginRegistry* (*)();
    if (void* symbol = dlsym(RTLD_DEFAULT, "getPluginRegistry"))
    {
        return reinterpret_cast<GetPluginRegistryFn>(symbol)();
    }
    std::string const major = std::to_string(NV_TENSORRT_MAJOR);
    for (std::string const& library : {"libnvinfer.so." + major, "libnvinfer_lean.so." + major,
             "libnvinfer_dispatch.so." + major, std::string("libnvinfer.so")})
    {
        void* handle = dlopen(library.c_str(), RTLD_LAZY | RTLD_NOLOAD);
        if (handle == nullptr)
        {
            continue;
        }
        void* symbol = dlsym(handle, "getPluginRegistry");
        // The library stays loaded by whoever loaded it first; only our extra reference goes.
        dlclose(handle);
        if (symbol != nullptr)
        {
            return reinterpret_cast<GetPluginRegistryFn>(symbol)();
        }
    }
    return nullptr;
#endif
}

struct StaticRegistration
{
    StaticRegistration() noexcept
    {
        try
        {
            nvinfer1::IPluginRegistry* registry = findPluginRegistry();
            PLUGIN_VALIDATE(registry != nullptr,
                "TensorRT's plugin registry was not found: load TensorRT (libnvinfer) before "
                "libtokcompile_plugins.so, or load libtokcompile_plugins_dynamic.so through TensorRT "
                "(IPluginRegistry::loadLibrary, trtexec --dynamicPlugins)");
            int32_t nbCreators = 0;
            nvinfer1::IPluginCreatorInterface* const* creators = pluginCreators(nbCreators);
            for (int32_t i = 0; i < nbCreators; ++i)
            {
                if (!registry->registerCreator(*creators[i], kPluginNamespace))
                {
                    // Not fatal: the other creators may still register (e.g. the library was
                    // loaded twice under different paths).
                    reportError(nullptr, nvinfer1::ErrorCode::kINVALID_STATE, "library", "registerCreator",
                        "IPluginRegistry::registerCreator refused a creator (already registered?)");
                }
            }
        }
        catch (...)
        {
            reportException(nullptr, "library", "static registration");
        }
    }
};

StaticRegistration const gStaticRegistration;

} // namespace
} // namespace plugin
} // namespace tokcompile

/*
 * The plugin creators of this library, one static instance each, shared by the two library
 * variants: the self-registering one (staticRegistration.cpp) and the getCreators one
 * (dynamicEntryPoints.cpp).
 */
#ifndef TOKCOMPILE_CREATORS_H
#define TOKCOMPILE_CREATORS_H

#include <NvInferRuntime.h>

#include <cstdint>

namespace tokcompile
{
namespace plugin
{

//! All creators of the library (EvitSelect, AtsSample); stable pointers for the process
//! lifetime. Never throws (the creators' constructors only fill field lists).
nvinfer1::IPluginCreatorInterface* const* pluginCreators(int32_t& nbCreators) noexcept;

} // namespace plugin
} // namespace tokcompile

#endif // TOKCOMPILE_CREATORS_H

/*
 * The creators of this library. Function-local statics: constructed on first use, so the
 * static registration of the self-registering variant does not depend on the initialisation
 * order of translation units.
 */
#include "common/tokcompileCreators.h"

#include "atsSamplePlugin/atsSamplePlugin.h"
#include "evitSelectPlugin/evitSelectPlugin.h"

namespace tokcompile
{
namespace plugin
{

nvinfer1::IPluginCreatorInterface* const* pluginCreators(int32_t& nbCreators) noexcept
{
    static EvitSelectPluginCreator sEvitSelectCreator;
    static AtsSamplePluginCreator sAtsSampleCreator;
    static nvinfer1::IPluginCreatorInterface* const sCreators[] = {&sEvitSelectCreator, &sAtsSampleCreator};
    nbCreators = static_cast<int32_t>(sizeof(sCreators) / sizeof(sCreators[0]));
    return sCreators;
}

} // namespace plugin
} // namespace tokcompile

/*
 * Exercises the TensorRT glue of libtokcompile_plugins*.so without TensorRT's runtime or a GPU.
 *
 * Usage: tokcompile_plugin_glue_check <libtokcompile_plugins.so> <libtokcompile_plugins_dynamic.so>
 *
 * Stands in for TensorRT with small fakes of the interfaces it hands to plugins (plugin registry,
 * IExprBuilder/IDimensionExpr, error recorder, logger finder, resource context) and checks:
 *   - dynamic variant: getCreators / setLoggerFinder, creator identity and field lists, and that
 *     loading it registers nothing;
 *   - static variant: loading it registers both creators with namespace "tokcompile" (it finds
 *     this executable's getPluginRegistry, exported with -rdynamic), and exports no getCreators;
 *   - per plugin: field parsing and its errors, output types and shapes, format support,
 *     configure/onShapeChange validation, serialization round trip, clone, attachToContext with
 *     errors going to the context's error recorder, and enqueue failing cleanly (null pointers:
 *     no kernel is launched, so this is safe with or without a GPU).
 * Prints one line per failed check and "glue check: N checks, M failed"; exit status 1 on any
 * failure. TOKCOMPILE_GLUE_VERBOSE=1 also prints the error messages the plugins logged.
 * Written against the TensorRT 10.x and 11.x headers.
 */
#include <NvInferRuntime.h>

#include <dlfcn.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace
{

int gChecks = 0;
int gFailures = 0;

void check(bool ok, std::string const& what)
{
    ++gChecks;
    if (!ok)
    {
        ++gFailures;
        std::printf("FAILED: %s\n", what.c_str());
    }
}

// ---------------------------------------------------------------------------------------------
// Fakes of what TensorRT hands to plugins.

class FakeLogger : public ILogger
{
public:
    void log(Severity severity, AsciiChar const* msg) noexcept override
    {
        if (severity <= Severity::kERROR)
        {
            messages.emplace_back(msg);
        }
    }
    std::vector<std::string> messages;
};

class FakeLoggerFinder : public ILoggerFinder
{
public:
    ILogger* findLogger() override
    {
        return &logger;
    }
    FakeLogger logger;
};

class FakeErrorRecorder : public IErrorRecorder
{
public:
    int32_t getNbErrors() const noexcept override
    {
        return static_cast<int32_t>(errors.size());
    }
    ErrorCode getErrorCode(int32_t i) const noexcept override
    {
        return errors.at(i).first;
    }
    ErrorDesc getErrorDesc(int32_t i) const noexcept override
    {
        return errors.at(i).second.c_str();
    }
    bool hasOverflowed() const noexcept override
    {
        return false;
    }
    void clear() noexcept override
    {
        errors.clear();
    }
    bool reportError(ErrorCode code, ErrorDesc desc) noexcept override
    {
        errors.emplace_back(code, desc);
        return false;
    }
    RefCount incRefCount() noexcept override
    {
        return ++refs;
    }
    RefCount decRefCount() noexcept override
    {
        return --refs;
    }
    std::vector<std::pair<ErrorCode, std::string>> errors;
    RefCount refs{0};
};

class FakeResourceContext : public IPluginResourceContext
{
public:
    IGpuAllocator* getGpuAllocator() const noexcept override
    {
        return nullptr;
    }
    IErrorRecorder* getErrorRecorder() const noexcept override
    {
        return recorder;
    }
    IErrorRecorder* recorder{nullptr};
};

class FakeDimImpl : public apiv::VDimensionExpr
{
public:
    FakeDimImpl(bool constant, int64_t value)
        : mConstant(constant)
        , mValue(value)
    {
    }
    bool isConstant() const override
    {
        return mConstant;
    }
    int64_t getConstantValue() const override
    {
        return mConstant ? mValue : INT64_MIN;
    }
    bool isSizeTensor() const override
    {
        return false;
    }

private:
    bool mConstant;
    int64_t mValue;
};

class FakeDim : public IDimensionExpr
{
public:
    FakeDim(bool constant, int64_t value)
        : mFake(constant, value)
    {
        mImpl = &mFake;
    }
    ~FakeDim() noexcept override = default;

private:
    FakeDimImpl mFake;
};

class FakeExprBuilderImpl : public apiv::VExprBuilder
{
public:
    IDimensionExpr const* constant(int64_t value) override
    {
        return make(true, value);
    }
    IDimensionExpr const* operation(DimensionOperation, IDimensionExpr const&, IDimensionExpr const&) override
    {
        return make(false, 0); // the plugins only pass input expressions through
    }
    IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override
    {
        return make(false, 0);
    }
    IDimensionExpr const* make(bool constant, int64_t value)
    {
        dims.push_back(std::make_unique<FakeDim>(constant, value));
        return dims.back().get();
    }
    std::deque<std::unique_ptr<FakeDim>> dims;
};

class FakeExprBuilder : public IExprBuilder
{
public:
    FakeExprBuilder()
    {
        mImpl = &fake;
    }
    ~FakeExprBuilder() noexcept override = default;
    FakeExprBuilderImpl fake;
};

class FakeRegistry : public IPluginRegistry
{
public:
    ~FakeRegistry() noexcept override = default;
    void setErrorRecorder(IErrorRecorder* const) noexcept override {}
    IErrorRecorder* getErrorRecorder() const noexcept override
    {
        return nullptr;
    }
    bool isParentSearchEnabled() const override
    {
        return false;
    }
    void setParentSearchEnabled(bool const) override {}
    PluginLibraryHandle loadLibrary(AsciiChar const*) noexcept override
    {
        return nullptr;
    }
    void deregisterLibrary(PluginLibraryHandle) noexcept override {}
    bool registerCreator(IPluginCreatorInterface& creator, AsciiChar const* const pluginNamespace) noexcept override
    {
        registered.emplace_back(&creator, pluginNamespace != nullptr ? pluginNamespace : "<null>");
        return true;
    }
    IPluginCreatorInterface* const* getAllCreators(int32_t* const numCreators) const noexcept override
    {
        *numCreators = 0;
        return nullptr;
    }
    IPluginCreatorInterface* getCreator(
        AsciiChar const* const, AsciiChar const* const, AsciiChar const* const) noexcept override
    {
        return nullptr;
    }
    bool deregisterCreator(IPluginCreatorInterface const&) noexcept override
    {
        return false;
    }
    IPluginResource* acquirePluginResource(AsciiChar const*, IPluginResource*) noexcept override
    {
        return nullptr;
    }
    int32_t releasePluginResource(AsciiChar const*) noexcept override
    {
        return 0;
    }
#if NV_TENSORRT_MAJOR > 10 || NV_TENSORRT_MINOR >= 10
    IPluginCreatorInterface* const* getAllCreatorsRecursive(int32_t* const numCreators) noexcept override
    {
        *numCreators = 0;
        return nullptr;
    }
#endif
#if NV_TENSORRT_MAJOR < 11
    // The IPluginV2 family, removed in TensorRT 11.
    bool registerCreator(IPluginCreator&, AsciiChar const* const) noexcept override
    {
        return false;
    }
    IPluginCreator* const* getPluginCreatorList(int32_t* const numCreators) const noexcept override
    {
        *numCreators = 0;
        return nullptr;
    }
    IPluginCreator* getPluginCreator(
        AsciiChar const* const, AsciiChar const* const, AsciiChar const* const) noexcept override
    {
        return nullptr;
    }
    bool deregisterCreator(IPluginCreator const&) noexcept override
    {
        return false;
    }
#endif
    std::vector<std::pair<IPluginCreatorInterface*, std::string>> registered;
};

FakeRegistry gRegistry;

} // namespace

// The self-registering plugin library looks this up when it is loaded (this executable is
// linked with -rdynamic / ENABLE_EXPORTS).
extern "C" __attribute__((visibility("default"))) IPluginRegistry* getPluginRegistry() noexcept
{
    return &gRegistry;
}

namespace
{

// ---------------------------------------------------------------------------------------------
// Helpers.

Dims makeDims(std::vector<int64_t> const& extents)
{
    Dims dims{};
    dims.nbDims = static_cast<int32_t>(extents.size());
    for (size_t i = 0; i < extents.size(); ++i)
    {
        dims.d[i] = extents[i];
    }
    return dims;
}

PluginTensorDesc makeDesc(std::vector<int64_t> const& extents, DataType type)
{
    PluginTensorDesc desc{};
    desc.dims = makeDims(extents);
    desc.type = type;
    desc.format = TensorFormat::kLINEAR;
    desc.scale = -1.0F;
    return desc;
}

DynamicPluginTensorDesc makeDynamic(std::vector<int64_t> const& extents, DataType type)
{
    DynamicPluginTensorDesc desc{};
    desc.desc = makeDesc(extents, type);
    std::vector<int64_t> bound = extents;
    for (auto& e : bound)
    {
        e = e < 0 ? 8 : e; // a profile bound for the dynamic (batch) axis
    }
    desc.min = makeDims(bound);
    desc.opt = makeDims(bound);
    desc.max = makeDims(bound);
    return desc;
}

struct Field
{
    std::string name;
    PluginFieldType type;
    int64_t value;
};

struct FieldSet
{
    explicit FieldSet(std::vector<Field> const& fields)
    {
        for (Field const& f : fields)
        {
            names.push_back(f.name);
            values64.push_back(f.value);
            values32.push_back(static_cast<int32_t>(f.value));
        }
        // Addresses are taken only now that the vectors are complete.
        for (size_t i = 0; i < fields.size(); ++i)
        {
            void const* data = fields[i].type == PluginFieldType::kINT64 ? static_cast<void const*>(&values64[i])
                                                                         : static_cast<void const*>(&values32[i]);
            list.emplace_back(names[i].c_str(), data, fields[i].type, 1);
        }
        collection.nbFields = static_cast<int32_t>(list.size());
        collection.fields = list.data();
    }
    std::vector<std::string> names;
    std::vector<int64_t> values64;
    std::vector<int32_t> values32;
    std::vector<PluginField> list;
    PluginFieldCollection collection{};
};

int64_t fieldValue(PluginFieldCollection const* fc, char const* name)
{
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
    {
        PluginField const& f = fc->fields[i];
        if (std::strcmp(f.name, name) == 0 && f.length == 1)
        {
            if (f.type == PluginFieldType::kINT32)
            {
                return *static_cast<int32_t const*>(f.data);
            }
            if (f.type == PluginFieldType::kINT64)
            {
                return *static_cast<int64_t const*>(f.data);
            }
        }
    }
    return INT64_MIN;
}

bool lastMessageContains(FakeLogger const& logger, size_t before, char const* text)
{
    return logger.messages.size() > before && logger.messages.back().find(text) != std::string::npos;
}

IPluginCreatorV3One* findCreator(IPluginCreatorInterface* const* creators, int32_t n, char const* name)
{
    for (int32_t i = 0; i < n; ++i)
    {
        if (std::strcmp(creators[i]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") != 0)
        {
            continue;
        }
        auto* creator = static_cast<IPluginCreatorV3One*>(creators[i]);
        if (std::strcmp(creator->getPluginName(), name) == 0)
        {
            return creator;
        }
    }
    return nullptr;
}

void checkCreatorIdentity(IPluginCreatorV3One* creator, char const* name, std::vector<char const*> const& fields)
{
    std::string const tag = std::string(name) + " creator: ";
    check(std::strcmp(creator->getPluginVersion(), "1") == 0, tag + "version 1");
    check(std::strcmp(creator->getPluginNamespace(), "tokcompile") == 0, tag + "namespace tokcompile");
    PluginFieldCollection const* fc = creator->getFieldNames();
    check(fc != nullptr && fc->nbFields == static_cast<int32_t>(fields.size()), tag + "field count");
    for (size_t i = 0; fc != nullptr && i < fields.size() && static_cast<int32_t>(i) < fc->nbFields; ++i)
    {
        check(std::strcmp(fc->fields[i].name, fields[i]) == 0 && fc->fields[i].type == PluginFieldType::kINT32
                && fc->fields[i].length == 1,
            tag + "field " + fields[i]);
    }
}

struct Capabilities
{
    IPluginV3OneCore* core{nullptr};
    IPluginV3OneBuild* build{nullptr};
    IPluginV3OneRuntime* runtime{nullptr};
};

Capabilities capabilitiesOf(IPluginV3* plugin)
{
    Capabilities caps;
    caps.core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    caps.build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    caps.runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    return caps;
}

// ---------------------------------------------------------------------------------------------
// EvitSelect.

void checkEvitSelect(IPluginCreatorV3One* creator, FakeLogger& logger)
{
    char const* tag = "EvitSelect: ";
    checkCreatorIdentity(creator, "EvitSelect", {"k", "num_prefix", "fuse"});

    // Field parsing: ONNX INT attributes arrive as kINT32; kINT64 is accepted too; the lookup
    // attributes plugin_namespace / plugin_version are ignored.
    struct BadCase
    {
        std::vector<Field> fields;
        char const* message;
    };
    std::vector<BadCase> const bad = {
        {{{"k", PluginFieldType::kINT32, 0}, {"num_prefix", PluginFieldType::kINT32, 1},
             {"fuse", PluginFieldType::kINT32, 1}},
            "field 'k' must be >= 1"},
        {{{"k", PluginFieldType::kINT32, 5}, {"num_prefix", PluginFieldType::kINT32, 1},
             {"fuse", PluginFieldType::kINT32, 2}},
            "field 'fuse' must be 0 or 1"},
        {{{"k", PluginFieldType::kINT32, 5}, {"num_prefix", PluginFieldType::kINT32, -1},
             {"fuse", PluginFieldType::kINT32, 0}},
            "field 'num_prefix' must be >= 0"},
        {{{"k", PluginFieldType::kINT32, 5}, {"fuse", PluginFieldType::kINT32, 0}}, "missing field 'num_prefix'"},
        {{{"k", PluginFieldType::kINT32, 5}, {"num_prefix", PluginFieldType::kINT32, 1},
             {"fuse", PluginFieldType::kINT32, 0}, {"keep_rate", PluginFieldType::kINT32, 1}},
            "unknown field 'keep_rate'"},
        {{{"k", PluginFieldType::kFLOAT32, 5}, {"num_prefix", PluginFieldType::kINT32, 1},
             {"fuse", PluginFieldType::kINT32, 0}},
            "must be an integer"},
    };
    for (BadCase const& c : bad)
    {
        FieldSet fs(c.fields);
        size_t const before = logger.messages.size();
        IPluginV3* plugin = creator->createPlugin("evit", &fs.collection, TensorRTPhase::kBUILD);
        check(plugin == nullptr, std::string(tag) + "createPlugin rejects: " + c.message);
        check(lastMessageContains(logger, before, c.message), std::string(tag) + "message '" + c.message + "'");
        delete plugin;
    }

    FieldSet good({{"k", PluginFieldType::kINT32, 138}, {"num_prefix", PluginFieldType::kINT64, 1},
        {"fuse", PluginFieldType::kINT32, 1}, {"plugin_namespace", PluginFieldType::kCHAR, 0},
        {"plugin_version", PluginFieldType::kCHAR, 0}});
    std::unique_ptr<IPluginV3> plugin(creator->createPlugin("evit", &good.collection, TensorRTPhase::kBUILD));
    check(plugin != nullptr, std::string(tag) + "createPlugin(k=138, num_prefix=1, fuse=1)");
    if (!plugin)
    {
        return;
    }
    Capabilities caps = capabilitiesOf(plugin.get());
    check(caps.core != nullptr && caps.build != nullptr && caps.runtime != nullptr, std::string(tag) + "capabilities");
    if (!caps.core || !caps.build || !caps.runtime)
    {
        return;
    }
    check(std::strcmp(caps.core->getPluginName(), "EvitSelect") == 0
            && std::strcmp(caps.core->getPluginVersion(), "1") == 0
            && std::strcmp(caps.core->getPluginNamespace(), "tokcompile") == 0,
        std::string(tag) + "core identity");
    check(caps.build->getNbOutputs() == 2, std::string(tag) + "2 outputs");

    // Output types.
    for (DataType x : {DataType::kFLOAT, DataType::kHALF, DataType::kBF16})
    {
        DataType in[2] = {x, DataType::kFLOAT};
        DataType out[2] = {DataType::kINT8, DataType::kINT8};
        check(caps.build->getOutputDataTypes(out, 2, in, 2) == 0 && out[0] == x && out[1] == DataType::kINT64,
            std::string(tag) + "output types follow x, kept int64");
    }
    {
        DataType in[2] = {DataType::kINT32, DataType::kFLOAT};
        DataType out[2];
        size_t const before = logger.messages.size();
        check(caps.build->getOutputDataTypes(out, 2, in, 2) != 0, std::string(tag) + "int32 x rejected");
        check(lastMessageContains(logger, before, "input 'x' must be float32, float16 or bfloat16"),
            std::string(tag) + "int32 x message");
        DataType in2[2] = {DataType::kHALF, DataType::kHALF};
        check(caps.build->getOutputDataTypes(out, 2, in2, 2) != 0, std::string(tag) + "float16 attn rejected");
    }

    // Output shapes: x [B, 197, 384], attn [B, 6, 197] -> out [B, 140, 384], kept [B, 138].
    {
        FakeExprBuilder builder;
        DimsExprs inputs[2];
        IDimensionExpr const* batch = builder.fake.make(false, 0);
        inputs[0].nbDims = 3;
        inputs[0].d[0] = batch;
        inputs[0].d[1] = builder.fake.make(true, 197);
        inputs[0].d[2] = builder.fake.make(true, 384);
        inputs[1].nbDims = 3;
        inputs[1].d[0] = batch;
        inputs[1].d[1] = builder.fake.make(true, 6);
        inputs[1].d[2] = builder.fake.make(true, 197);
        DimsExprs outputs[2];
        int32_t const status = caps.build->getOutputShapes(inputs, 2, nullptr, 0, outputs, 2, builder);
        check(status == 0, std::string(tag) + "getOutputShapes");
        if (status == 0)
        {
            check(outputs[0].nbDims == 3 && outputs[0].d[0] == batch && outputs[0].d[1]->isConstant()
                    && outputs[0].d[1]->getConstantValue() == 140 && outputs[0].d[2] == inputs[0].d[2],
                std::string(tag) + "out is [B, P + k + fuse = 140, C]");
            check(outputs[1].nbDims == 2 && outputs[1].d[0] == batch && outputs[1].d[1]->isConstant()
                    && outputs[1].d[1]->getConstantValue() == 138,
                std::string(tag) + "kept is [B, k = 138]");
        }
        inputs[0].d[1] = builder.fake.make(true, 139); // k == N - P
        inputs[1].d[2] = inputs[0].d[1];
        size_t const before = logger.messages.size();
        check(caps.build->getOutputShapes(inputs, 2, nullptr, 0, outputs, 2, builder) != 0,
            std::string(tag) + "k == N - P rejected");
        check(lastMessageContains(logger, before, "must be < N - num_prefix"), std::string(tag) + "k range message");
        inputs[1].d[2] = builder.fake.make(true, 200);
        check(caps.build->getOutputShapes(inputs, 2, nullptr, 0, outputs, 2, builder) != 0,
            std::string(tag) + "token counts of x and attn must agree");
    }

    // Formats: x float/half/bf16, attn float, out = x's type, kept int64, linear only.
    {
        DynamicPluginTensorDesc io[4]
            = {makeDynamic({-1, 197, 384}, DataType::kHALF), makeDynamic({-1, 6, 197}, DataType::kFLOAT),
                makeDynamic({-1, 140, 384}, DataType::kHALF), makeDynamic({-1, 138}, DataType::kINT64)};
        check(caps.build->supportsFormatCombination(0, io, 2, 2), std::string(tag) + "x float16");
        check(caps.build->supportsFormatCombination(1, io, 2, 2), std::string(tag) + "attn float32");
        check(caps.build->supportsFormatCombination(2, io, 2, 2), std::string(tag) + "out float16 (= x)");
        check(caps.build->supportsFormatCombination(3, io, 2, 2), std::string(tag) + "kept int64");
        io[2].desc.type = DataType::kFLOAT;
        check(!caps.build->supportsFormatCombination(2, io, 2, 2), std::string(tag) + "out must match x");
        io[3].desc.type = DataType::kINT32;
        check(!caps.build->supportsFormatCombination(3, io, 2, 2), std::string(tag) + "kept int32 refused");
        io[1].desc.type = DataType::kHALF;
        check(!caps.build->supportsFormatCombination(1, io, 2, 2), std::string(tag) + "attn float16 refused");
        io[0].desc.type = DataType::kINT8;
        check(!caps.build->supportsFormatCombination(0, io, 2, 2), std::string(tag) + "x int8 refused");
        io[0].desc.type = DataType::kHALF;
        io[0].desc.format = TensorFormat::kHWC8;
        check(!caps.build->supportsFormatCombination(0, io, 2, 2), std::string(tag) + "non-linear format refused");
    }

    // configurePlugin (build) and onShapeChange (runtime).
    {
        DynamicPluginTensorDesc in[2]
            = {makeDynamic({-1, 197, 384}, DataType::kHALF), makeDynamic({-1, 6, 197}, DataType::kFLOAT)};
        DynamicPluginTensorDesc out[2]
            = {makeDynamic({-1, 140, 384}, DataType::kHALF), makeDynamic({-1, 138}, DataType::kINT64)};
        check(caps.build->configurePlugin(in, 2, out, 2) == 0, std::string(tag) + "configurePlugin");
        in[1] = makeDynamic({-1, 6, 196}, DataType::kFLOAT);
        check(caps.build->configurePlugin(in, 2, out, 2) != 0, std::string(tag) + "configurePlugin token mismatch");
        check(caps.build->getWorkspaceSize(in, 2, out, 2) == 0, std::string(tag) + "no workspace");

        PluginTensorDesc rin[2] = {makeDesc({8, 197, 384}, DataType::kHALF), makeDesc({8, 6, 197}, DataType::kFLOAT)};
        PluginTensorDesc rout[2] = {makeDesc({8, 140, 384}, DataType::kHALF), makeDesc({8, 138}, DataType::kINT64)};
        check(caps.runtime->onShapeChange(rin, 2, rout, 2) == 0, std::string(tag) + "onShapeChange");
        rout[0] = makeDesc({8, 139, 384}, DataType::kHALF);
        check(caps.runtime->onShapeChange(rin, 2, rout, 2) != 0, std::string(tag) + "onShapeChange bad out");
    }

    // Serialization round trip through the creator (runtime phase).
    {
        PluginFieldCollection const* serial = caps.runtime->getFieldsToSerialize();
        check(serial != nullptr && serial->nbFields == 3 && fieldValue(serial, "k") == 138
                && fieldValue(serial, "num_prefix") == 1 && fieldValue(serial, "fuse") == 1,
            std::string(tag) + "getFieldsToSerialize");
        std::unique_ptr<IPluginV3> restored(creator->createPlugin("evit", serial, TensorRTPhase::kRUNTIME));
        check(restored != nullptr, std::string(tag) + "createPlugin from serialized fields");
        if (restored)
        {
            auto* rt
                = static_cast<IPluginV3OneRuntime*>(restored->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
            PluginFieldCollection const* again = rt->getFieldsToSerialize();
            check(
                fieldValue(again, "k") == 138 && fieldValue(again, "num_prefix") == 1 && fieldValue(again, "fuse") == 1,
                std::string(tag) + "round trip keeps the fields");
        }
        std::unique_ptr<IPluginV3> copy(plugin->clone());
        check(copy != nullptr, std::string(tag) + "clone");
        if (copy)
        {
            auto* rt = static_cast<IPluginV3OneRuntime*>(copy->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
            check(fieldValue(rt->getFieldsToSerialize(), "k") == 138, std::string(tag) + "clone keeps the fields");
        }
    }

    // attachToContext: errors of the attached clone go to the context's error recorder.
    {
        FakeErrorRecorder recorder;
        FakeResourceContext context;
        context.recorder = &recorder;
        std::unique_ptr<IPluginV3> attached(caps.runtime->attachToContext(&context));
        check(attached != nullptr, std::string(tag) + "attachToContext");
        if (attached)
        {
            auto* rt
                = static_cast<IPluginV3OneRuntime*>(attached->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
            PluginTensorDesc rin[2] = {makeDesc({2, 197}, DataType::kHALF), makeDesc({2, 6, 197}, DataType::kFLOAT)};
            PluginTensorDesc rout[2] = {makeDesc({2, 140, 384}, DataType::kHALF), makeDesc({2, 138}, DataType::kINT64)};
            check(rt->onShapeChange(rin, 2, rout, 2) != 0, std::string(tag) + "rank-2 x rejected");
            check(recorder.getNbErrors() == 1
                    && std::string(recorder.getErrorDesc(0)).find("tokcompile::EvitSelect::onShapeChange")
                        != std::string::npos
                    && recorder.getErrorCode(0) == ErrorCode::kINVALID_ARGUMENT,
                std::string(tag) + "error reported to the context's recorder");

            // enqueue with valid shapes but null data: the launcher refuses before touching the GPU.
            PluginTensorDesc ein[2]
                = {makeDesc({2, 197, 384}, DataType::kHALF), makeDesc({2, 6, 197}, DataType::kFLOAT)};
            void const* inPtrs[2] = {nullptr, nullptr};
            void* outPtrs[2] = {nullptr, nullptr};
            check(
                rt->enqueue(ein, rout, inPtrs, outPtrs, nullptr, nullptr) != 0, std::string(tag) + "enqueue null data");
            check(recorder.getNbErrors() == 2
                    && std::string(recorder.getErrorDesc(1)).find("kernel launch failed") != std::string::npos,
                std::string(tag) + "enqueue failure reported");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// AtsSample.

void checkAtsSample(IPluginCreatorV3One* creator, FakeLogger& logger)
{
    char const* tag = "AtsSample: ";
    checkCreatorIdentity(creator, "AtsSample", {"num_samples"});

    {
        FieldSet zero({{"num_samples", PluginFieldType::kINT32, 0}});
        size_t const before = logger.messages.size();
        check(creator->createPlugin("ats", &zero.collection, TensorRTPhase::kBUILD) == nullptr,
            std::string(tag) + "num_samples 0 rejected");
        check(lastMessageContains(logger, before, "field 'num_samples' must be >= 1"),
            std::string(tag) + "num_samples message");
        FieldSet none({});
        check(creator->createPlugin("ats", &none.collection, TensorRTPhase::kBUILD) == nullptr,
            std::string(tag) + "missing num_samples rejected");
    }
    FieldSet good({{"num_samples", PluginFieldType::kINT64, 196}});
    std::unique_ptr<IPluginV3> plugin(creator->createPlugin("ats", &good.collection, TensorRTPhase::kBUILD));
    check(plugin != nullptr, std::string(tag) + "createPlugin(num_samples=196)");
    if (!plugin)
    {
        return;
    }
    Capabilities caps = capabilitiesOf(plugin.get());
    check(caps.core != nullptr && caps.build != nullptr && caps.runtime != nullptr, std::string(tag) + "capabilities");
    if (!caps.core || !caps.build || !caps.runtime)
    {
        return;
    }
    check(std::strcmp(caps.core->getPluginName(), "AtsSample") == 0, std::string(tag) + "core name");
    check(caps.build->getNbOutputs() == 2, std::string(tag) + "2 outputs");

    for (DataType v : {DataType::kFLOAT, DataType::kHALF, DataType::kBF16})
    {
        for (DataType mask : {DataType::kBOOL, DataType::kINT32})
        {
            DataType in[3] = {DataType::kFLOAT, v, mask};
            DataType out[2] = {DataType::kINT8, DataType::kINT8};
            check(caps.build->getOutputDataTypes(out, 2, in, 3) == 0 && out[0] == DataType::kINT64
                    && out[1] == DataType::kINT64,
                std::string(tag) + "rows and count int64");
        }
    }
    {
        DataType in[3] = {DataType::kHALF, DataType::kHALF, DataType::kBOOL};
        DataType out[2];
        size_t const before = logger.messages.size();
        check(caps.build->getOutputDataTypes(out, 2, in, 3) != 0, std::string(tag) + "float16 attn rejected");
        check(lastMessageContains(logger, before, "input 'attn' must be float32"), std::string(tag) + "attn message");
    }

    // Shapes: rows [B, n], count [B] -- static functions of the input shapes.
    {
        FakeExprBuilder builder;
        IDimensionExpr const* batch = builder.fake.make(false, 0);
        IDimensionExpr const* heads = builder.fake.make(true, 6);
        IDimensionExpr const* tokens = builder.fake.make(false, 0); // a dynamic bucket size
        DimsExprs inputs[3];
        inputs[0].nbDims = 3;
        inputs[0].d[0] = batch;
        inputs[0].d[1] = heads;
        inputs[0].d[2] = tokens;
        inputs[1].nbDims = 4;
        inputs[1].d[0] = batch;
        inputs[1].d[1] = heads;
        inputs[1].d[2] = tokens;
        inputs[1].d[3] = builder.fake.make(true, 64);
        inputs[2].nbDims = 2;
        inputs[2].d[0] = batch;
        inputs[2].d[1] = tokens;
        DimsExprs outputs[2];
        check(caps.build->getOutputShapes(inputs, 3, nullptr, 0, outputs, 2, builder) == 0 && outputs[0].nbDims == 2
                && outputs[0].d[0] == batch && outputs[0].d[1] == tokens && outputs[1].nbDims == 1
                && outputs[1].d[0] == batch,
            std::string(tag) + "rows [B, n], count [B]");
        inputs[1].nbDims = 3;
        check(caps.build->getOutputShapes(inputs, 3, nullptr, 0, outputs, 2, builder) != 0,
            std::string(tag) + "rank-3 v rejected");
    }

    {
        DynamicPluginTensorDesc io[5] = {makeDynamic({-1, 6, 197}, DataType::kFLOAT),
            makeDynamic({-1, 6, 197, 64}, DataType::kHALF), makeDynamic({-1, 197}, DataType::kBOOL),
            makeDynamic({-1, 197}, DataType::kINT64), makeDynamic({-1}, DataType::kINT64)};
        for (int32_t pos = 0; pos < 5; ++pos)
        {
            check(caps.build->supportsFormatCombination(pos, io, 3, 2),
                std::string(tag) + "supported position " + std::to_string(pos));
        }
        io[2].desc.type = DataType::kINT32;
        check(caps.build->supportsFormatCombination(2, io, 3, 2), std::string(tag) + "valid int32 accepted");
        io[2].desc.type = DataType::kINT8;
        check(!caps.build->supportsFormatCombination(2, io, 3, 2), std::string(tag) + "valid int8 refused");
        io[1].desc.type = DataType::kINT32;
        check(!caps.build->supportsFormatCombination(1, io, 3, 2), std::string(tag) + "v int32 refused");
        io[4].desc.type = DataType::kINT32;
        check(!caps.build->supportsFormatCombination(4, io, 3, 2), std::string(tag) + "count int32 refused");

        DynamicPluginTensorDesc in[3] = {makeDynamic({-1, 6, 197}, DataType::kFLOAT),
            makeDynamic({-1, 6, 197, 64}, DataType::kHALF), makeDynamic({-1, 197}, DataType::kBOOL)};
        DynamicPluginTensorDesc out[2]
            = {makeDynamic({-1, 197}, DataType::kINT64), makeDynamic({-1}, DataType::kINT64)};
        check(caps.build->configurePlugin(in, 3, out, 2) == 0, std::string(tag) + "configurePlugin");
        in[1] = makeDynamic({-1, 12, 197, 64}, DataType::kHALF);
        check(caps.build->configurePlugin(in, 3, out, 2) != 0, std::string(tag) + "configurePlugin head mismatch");
    }

    {
        PluginFieldCollection const* serial = caps.runtime->getFieldsToSerialize();
        check(serial != nullptr && serial->nbFields == 1 && fieldValue(serial, "num_samples") == 196,
            std::string(tag) + "getFieldsToSerialize");
        std::unique_ptr<IPluginV3> restored(creator->createPlugin("ats", serial, TensorRTPhase::kRUNTIME));
        check(restored != nullptr, std::string(tag) + "createPlugin from serialized fields");

        FakeErrorRecorder recorder;
        FakeResourceContext context;
        context.recorder = &recorder;
        std::unique_ptr<IPluginV3> attached(caps.runtime->attachToContext(&context));
        check(attached != nullptr, std::string(tag) + "attachToContext");
        if (attached)
        {
            auto* rt
                = static_cast<IPluginV3OneRuntime*>(attached->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
            PluginTensorDesc in[3] = {makeDesc({4, 6, 197}, DataType::kFLOAT),
                makeDesc({4, 6, 197, 64}, DataType::kBF16), makeDesc({4, 197}, DataType::kBOOL)};
            PluginTensorDesc out[2] = {makeDesc({4, 197}, DataType::kINT64), makeDesc({4}, DataType::kINT64)};
            check(rt->onShapeChange(in, 3, out, 2) == 0, std::string(tag) + "onShapeChange");
            PluginTensorDesc badOut[2] = {makeDesc({4, 196}, DataType::kINT64), makeDesc({4}, DataType::kINT64)};
            check(rt->onShapeChange(in, 3, badOut, 2) != 0, std::string(tag) + "onShapeChange rows must be [B, n]");
            void const* inPtrs[3] = {nullptr, nullptr, nullptr};
            void* outPtrs[2] = {nullptr, nullptr};
            check(rt->enqueue(in, out, inPtrs, outPtrs, nullptr, nullptr) != 0, std::string(tag) + "enqueue null data");
            check(recorder.getNbErrors() == 2
                    && std::string(recorder.getErrorDesc(1)).find("tokcompile::AtsSample::enqueue")
                        != std::string::npos,
                std::string(tag) + "errors reported to the context's recorder");
        }
    }
}

} // namespace

int main(int argc, char** argv)
{
    if (argc != 3)
    {
        std::printf("usage: %s <libtokcompile_plugins.so> <libtokcompile_plugins_dynamic.so>\n", argv[0]);
        return 2;
    }

    // Dynamic variant: loading registers nothing; TensorRT calls getCreators itself.
    void* dynamicLib = dlopen(argv[2], RTLD_NOW | RTLD_LOCAL);
    check(dynamicLib != nullptr, std::string("dlopen dynamic variant: ") + (dynamicLib ? "" : dlerror()));
    check(gRegistry.registered.empty(), "dynamic variant registers nothing on load");
    FakeLoggerFinder finder;
    if (dynamicLib != nullptr)
    {
        using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);
        using SetLoggerFinder = void (*)(ILoggerFinder*);
        auto getCreators = reinterpret_cast<GetCreators>(dlsym(dynamicLib, "getCreators"));
        auto setLoggerFinder = reinterpret_cast<SetLoggerFinder>(dlsym(dynamicLib, "setLoggerFinder"));
        check(getCreators != nullptr, "dynamic variant exports getCreators");
        check(setLoggerFinder != nullptr, "dynamic variant exports setLoggerFinder");
        if (getCreators != nullptr && setLoggerFinder != nullptr)
        {
            setLoggerFinder(&finder);
            int32_t n = -1;
            IPluginCreatorInterface* const* creators = getCreators(n);
            check(creators != nullptr && n == 2, "getCreators returns 2 creators");
            IPluginCreatorV3One* evit = findCreator(creators, n, "EvitSelect");
            IPluginCreatorV3One* ats = findCreator(creators, n, "AtsSample");
            check(evit != nullptr, "EvitSelect creator (IPluginCreatorV3One)");
            check(ats != nullptr, "AtsSample creator (IPluginCreatorV3One)");
            if (evit != nullptr)
            {
                checkEvitSelect(evit, finder.logger);
            }
            if (ats != nullptr)
            {
                checkAtsSample(ats, finder.logger);
            }
        }
    }

    // Static variant: loading registers both creators with namespace "tokcompile".
    void* staticLib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    check(staticLib != nullptr, std::string("dlopen static variant: ") + (staticLib ? "" : dlerror()));
    if (staticLib != nullptr)
    {
        check(dlsym(staticLib, "getCreators") == nullptr, "static variant does not export getCreators");
        check(gRegistry.registered.size() == 2, "static variant registered 2 creators on load");
        int32_t evitCount = 0;
        int32_t atsCount = 0;
        for (auto const& entry : gRegistry.registered)
        {
            check(entry.second == "tokcompile", "registered with namespace tokcompile");
            check(std::strcmp(entry.first->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0,
                "registered an IPluginCreatorV3One");
            auto* creator = static_cast<IPluginCreatorV3One*>(entry.first);
            evitCount += std::strcmp(creator->getPluginName(), "EvitSelect") == 0 ? 1 : 0;
            atsCount += std::strcmp(creator->getPluginName(), "AtsSample") == 0 ? 1 : 0;
            check(std::strcmp(creator->getPluginNamespace(), "tokcompile") == 0
                    && std::strcmp(creator->getPluginVersion(), "1") == 0,
                "registered creator identity");
        }
        check(evitCount == 1 && atsCount == 1, "static variant registered EvitSelect and AtsSample");
        IPluginCreatorInterface* const* list = nullptr;
        std::vector<IPluginCreatorInterface*> creators;
        for (auto const& entry : gRegistry.registered)
        {
            creators.push_back(entry.first);
        }
        list = creators.data();
        IPluginCreatorV3One* ats = findCreator(list, static_cast<int32_t>(creators.size()), "AtsSample");
        if (ats != nullptr)
        {
            FieldSet fs({{"num_samples", PluginFieldType::kINT32, 196}});
            std::unique_ptr<IPluginV3> plugin(ats->createPlugin("ats", &fs.collection, TensorRTPhase::kBUILD));
            check(plugin != nullptr, "static variant: AtsSample createPlugin");
        }
    }

    if (std::getenv("TOKCOMPILE_GLUE_VERBOSE") != nullptr)
    {
        for (std::string const& message : finder.logger.messages)
        {
            std::printf("logged: %s\n", message.c_str());
        }
    }
    std::printf("glue check: %d checks, %d failed\n", gChecks, gFailures);
    // The libraries stay loaded: the registry (here a fake) keeps pointers to their creators.
    return gFailures == 0 ? 0 : 1;
}

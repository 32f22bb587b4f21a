// TensorRT decoder: cond once per decode, then the distilled sampler over the denoise engine, the
// whole decode captured once per (shape, step count, noise source, output format) in a CUDA graph.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <set>
#include <tuple>
#include <vector>

#include <NvInferRuntime.h>
#include <NvInferVersion.h>

#include "decoder.hpp"
#include "error.hpp"
#include "kernels.hpp"
#include "plan.hpp"

static_assert(NV_TENSORRT_MAJOR > 10 || (NV_TENSORRT_MAJOR == 10 && NV_TENSORRT_MINOR >= 1),
              "pidtrt needs TensorRT >= 10.1 (setDeviceMemoryV2)");

namespace pidtrt {
namespace {

namespace nv = nvinfer1;

void check_cuda(cudaError_t status, const std::string& what) {
    if (status != cudaSuccess)
        throw Error(PIDTRT_STATUS_CUDA_ERROR, what + ": " + cudaGetErrorName(status) + " (" +
                                                  cudaGetErrorString(status) + ")");
}

// Forwards TensorRT warnings to stderr and keeps the last error to append to our messages.
class Logger : public nv::ILogger {
public:
    void log(Severity severity, const char* msg) noexcept override {
        if (severity > Severity::kWARNING) return;
        std::fprintf(stderr, "[pidtrt] TensorRT: %s\n", msg);
        if (severity <= Severity::kERROR) {
            std::lock_guard<std::mutex> lock(mutex_);
            last_error_ = msg;
        }
    }
    std::string last_error() {
        std::lock_guard<std::mutex> lock(mutex_);
        return last_error_.empty() ? "" : " (TensorRT: " + last_error_ + ")";
    }

private:
    std::mutex mutex_;
    std::string last_error_;
};

template <typename T>
using TrtPtr = std::unique_ptr<T>;  // TensorRT 10 objects are released with delete

class DeviceBuffer {
public:
    DeviceBuffer() = default;
    explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
        check_cuda(cudaMalloc(&ptr_, std::max<size_t>(bytes, 1)), "cudaMalloc of " + std::to_string(bytes) + " bytes");
    }
    DeviceBuffer(DeviceBuffer&& other) noexcept { *this = std::move(other); }
    DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
        std::swap(ptr_, other.ptr_);
        std::swap(bytes_, other.bytes_);
        return *this;
    }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    ~DeviceBuffer() {
        if (ptr_) cudaFree(ptr_);
    }
    template <typename T = void>
    T* get() const { return static_cast<T*>(ptr_); }
    size_t bytes() const { return bytes_; }

private:
    void* ptr_ = nullptr;
    size_t bytes_ = 0;
};

struct GraphExecDeleter {
    void operator()(cudaGraphExec_t exec) const { cudaGraphExecDestroy(exec); }
};
using GraphExec = std::unique_ptr<std::remove_pointer_t<cudaGraphExec_t>, GraphExecDeleter>;

// Makes the decoder's device current for the scope of a call and restores the caller's.
class DeviceGuard {
public:
    explicit DeviceGuard(int device) {
        check_cuda(cudaGetDevice(&previous_), "cudaGetDevice");
        if (previous_ != device) check_cuda(cudaSetDevice(device), "cudaSetDevice(" + std::to_string(device) + ")");
    }
    ~DeviceGuard() { cudaSetDevice(previous_); }

private:
    int previous_ = 0;
};

size_t element_size(nv::DataType type, const std::string& tensor) {
    switch (type) {
        case nv::DataType::kFLOAT:
        case nv::DataType::kINT32: return 4;
        case nv::DataType::kHALF:
        case nv::DataType::kBF16: return 2;
        case nv::DataType::kINT8:
        case nv::DataType::kUINT8:
        case nv::DataType::kBOOL:
        case nv::DataType::kFP8: return 1;
        case nv::DataType::kINT64: return 8;
        default: throw Error(PIDTRT_STATUS_TENSORRT_ERROR, "tensor '" + tensor + "' has an unsupported data type");
    }
}

std::string dims_string(const nv::Dims& dims) {
    std::string out = "[";
    for (int i = 0; i < dims.nbDims; ++i) out += (i ? ", " : "") + std::to_string(dims.d[i]);
    return out + "]";
}

nv::Dims make_dims(std::initializer_list<int64_t> values) {
    nv::Dims dims{};
    dims.nbDims = static_cast<int32_t>(values.size());
    std::copy(values.begin(), values.end(), dims.d);
    return dims;
}

size_t volume(const nv::Dims& dims) {
    size_t n = 1;
    for (int i = 0; i < dims.nbDims; ++i) n *= static_cast<size_t>(dims.d[i]);
    return n;
}

std::vector<char> read_binary(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error(PIDTRT_STATUS_IO_ERROR, "cannot read engine file " + path);
    return std::vector<char>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

struct EngineIO {
    std::vector<std::string> inputs, outputs;
};

EngineIO list_io(const nv::ICudaEngine& engine) {
    EngineIO io;
    for (int i = 0; i < engine.getNbIOTensors(); ++i) {
        const char* name = engine.getIOTensorName(i);
        (engine.getTensorIOMode(name) == nv::TensorIOMode::kINPUT ? io.inputs : io.outputs).push_back(name);
    }
    return io;
}

bool contains(const std::vector<std::string>& names, const std::string& name) {
    return std::find(names.begin(), names.end(), name) != names.end();
}

// Execution contexts and buffers of one (batch, width, height).
struct ShapeEntry {
    int batch = 0, width = 0, height = 0, profile = 0;
    TrtPtr<nv::IExecutionContext> cond, denoise;
    DeviceBuffer latent, sigma, seed, x, v, t, y, output, noise;
    std::map<std::string, DeviceBuffer> features;  // cond outputs = denoise inputs, by name
    // (steps, injected noise, output format, round latent) -> graph
    std::map<std::tuple<int, bool, int, bool>, GraphExec> graphs;
    bool capture_failed = false;  // then this shape runs without graphs (one warning, no retries)
    uint64_t last_used = 0;

    size_t sample_elements() const { return size_t(batch) * 3 * height * width; }
};

class TrtDecoder final : public Decoder {
public:
    TrtDecoder(const std::string& engine_dir, const pidtrt_decoder_options& options)
        : options_(options), sidecar_(load_sidecar(engine_dir)) {
        DeviceGuard device(options_.device);
        warn_if_other_gpu_model();
        runtime_.reset(nv::createInferRuntime(logger_));
        if (!runtime_) throw Error(PIDTRT_STATUS_TENSORRT_ERROR, "cannot create the TensorRT runtime" + logger_.last_error());
        cond_engine_ = load_engine(sidecar_.cond_engine_file);
        denoise_engine_ = load_engine(sidecar_.denoise_engine_file);
        check_wiring();
        check_profiles();
        for (const auto& entry : sidecar_.t_lists)
            max_noise_draws_ = std::max(max_noise_draws_, sidecar_.noise_draws(entry.first));
        // Decodes are serialized, so every context shares one scratch allocation.
        const int64_t scratch =
            std::max(cond_engine_->getDeviceMemorySizeV2(), denoise_engine_->getDeviceMemorySizeV2());
        scratch_ = DeviceBuffer(static_cast<size_t>(scratch));
        // Last: nothing below throws past these handles without the destructor running.
        check_cuda(cudaStreamCreateWithFlags(&capture_stream_, cudaStreamNonBlocking), "cudaStreamCreate");
        check_cuda(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming), "cudaEventCreate");
        check_cuda(cudaEventCreateWithFlags(&caption_ready_, cudaEventDisableTiming), "cudaEventCreate");
    }

    ~TrtDecoder() override {
        int caller_device = 0;
        const bool restore = cudaGetDevice(&caller_device) == cudaSuccess;
        cudaSetDevice(options_.device);
        if (done_) cudaEventSynchronize(done_);
        entries_.clear();  // contexts before the engines and their scratch memory
        if (capture_stream_) cudaStreamDestroy(capture_stream_);
        if (done_) cudaEventDestroy(done_);
        if (caption_ready_) cudaEventDestroy(caption_ready_);
        caption_ = DeviceBuffer();
        scratch_ = DeviceBuffer();
        denoise_engine_.reset();
        cond_engine_.reset();
        runtime_.reset();
        if (restore) cudaSetDevice(caller_device);
    }

    const Sidecar& sidecar() const override { return sidecar_; }

    void set_caption_embedding(const float* y, int batch, cudaStream_t stream) override {
        if (!y || batch < 1) throw Error(PIDTRT_STATUS_INVALID_ARGUMENT, "caption embedding: y must be non-NULL and batch >= 1");
        DeviceGuard device(options_.device);
        const size_t bytes = size_t(batch) * sidecar_.text_max_length * sidecar_.text_embed_dim * sizeof(float);
        check_cuda(cudaStreamWaitEvent(stream, done_, 0), "cudaStreamWaitEvent");  // a queued decode may still read it
        if (caption_.bytes() < bytes) caption_ = DeviceBuffer(bytes);
        check_cuda(cudaMemcpyAsync(caption_.get(), y, bytes, cudaMemcpyDefault, stream), "copying the caption embedding");
        check_cuda(cudaEventRecord(caption_ready_, stream), "cudaEventRecord");
        caption_batch_ = batch;
    }

    void decode(const pidtrt_decode_params& p) override {
        if (!p.latent || !p.output)
            throw Error(PIDTRT_STATUS_INVALID_ARGUMENT, "decode: latent and output must be non-NULL device pointers");
        if (p.output_format < PIDTRT_OUTPUT_F32_NCHW || p.output_format > PIDTRT_OUTPUT_U8_NHWC)
            throw Error(PIDTRT_STATUS_INVALID_ARGUMENT, "decode: unknown output_format " + std::to_string(p.output_format));
        if (p.latent_rounding != PIDTRT_LATENT_ROUND_BF16 && p.latent_rounding != PIDTRT_LATENT_AS_IS)
            throw Error(PIDTRT_STATUS_INVALID_ARGUMENT, "decode: unknown latent_rounding " + std::to_string(p.latent_rounding));
        sidecar_.check_output_shape(p.width, p.height, p.batch);
        if (caption_batch_ != p.batch)
            throw Error(PIDTRT_STATUS_INVALID_ARGUMENT,
                        "decode: the caption embedding is set for batch " + std::to_string(caption_batch_) +
                            " but the decode asks for batch " + std::to_string(p.batch) +
                            "; call pidtrt_decoder_set_caption_embedding first");
        const int steps = p.steps > 0 ? p.steps : sidecar_.default_steps;
        const SamplerPlan plan = make_plan(sidecar_, steps);
        DeviceGuard device(options_.device);
        ShapeEntry& e = entry_for(p.batch, p.width, p.height);
        const cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
        const bool injected = p.noise != nullptr;

        check_cuda(cudaStreamWaitEvent(stream, done_, 0), "cudaStreamWaitEvent");
        check_cuda(cudaStreamWaitEvent(stream, caption_ready_, 0), "cudaStreamWaitEvent");
        const std::vector<float> sigma = p.degrade_sigma ? std::vector<float>(p.degrade_sigma, p.degrade_sigma + p.batch)
                                                         : std::vector<float>(p.batch, 0.0f);
        // Pageable host sources: cudaMemcpyAsync returns once they are staged, so locals are fine.
        check_cuda(cudaMemcpyAsync(e.sigma.get(), sigma.data(), sigma.size() * sizeof(float), cudaMemcpyHostToDevice, stream),
                   "copying degrade_sigma");
        const uint64_t seed = p.seed;
        check_cuda(cudaMemcpyAsync(e.seed.get(), &seed, sizeof seed, cudaMemcpyHostToDevice, stream), "copying the seed");
        check_cuda(cudaMemcpyAsync(e.latent.get(), p.latent, e.latent.bytes(), cudaMemcpyDefault, stream), "copying the latent");
        check_cuda(cudaMemcpyAsync(e.y.get(), caption_.get(), e.y.bytes(), cudaMemcpyDeviceToDevice, stream),
                   "copying the caption embedding");
        if (injected) {
            if (!e.noise.get()) e.noise = DeviceBuffer(size_t(max_noise_draws_) * e.sample_elements() * sizeof(float));
            check_cuda(cudaMemcpyAsync(e.noise.get(), p.noise, size_t(plan.noise_draws) * e.sample_elements() * sizeof(float),
                                       cudaMemcpyDefault, stream),
                       "copying the injected noise");
        }
        const bool round_latent = p.latent_rounding == PIDTRT_LATENT_ROUND_BF16;
        GraphExec* graph = nullptr;
        if (options_.use_cuda_graph && !e.capture_failed) {
            graph = &e.graphs[{steps, injected, p.output_format, round_latent}];
            if (!*graph) *graph = capture(e, plan, injected, p.output_format, round_latent);
        }
        if (graph && *graph)
            check_cuda(cudaGraphLaunch(graph->get(), stream), "cudaGraphLaunch");
        else  // no CUDA graphs, or this shape could not be captured: the same work, enqueued directly
            enqueue_decode(e, plan, injected, p.output_format, round_latent, stream);
        const size_t out_bytes = e.sample_elements() * (p.output_format == PIDTRT_OUTPUT_F32_NCHW ? sizeof(float) : 1);
        check_cuda(cudaMemcpyAsync(p.output, e.output.get(), out_bytes, cudaMemcpyDefault, stream), "copying the output");
        check_cuda(cudaEventRecord(done_, stream), "cudaEventRecord");
    }

private:
    TrtPtr<nv::ICudaEngine> load_engine(const std::string& file) {
        const std::string path = sidecar_.directory() + "/" + file;
        const std::vector<char> blob = read_binary(path);
        TrtPtr<nv::ICudaEngine> engine(runtime_->deserializeCudaEngine(blob.data(), blob.size()));
        if (!engine)
            throw Error(PIDTRT_STATUS_TENSORRT_ERROR,
                        "cannot deserialize " + path + "; it was built with TensorRT " + sidecar_.tensorrt_version +
                            " for " + sidecar_.gpu_name + " (this is TensorRT " + std::to_string(NV_TENSORRT_MAJOR) +
                            "." + std::to_string(NV_TENSORRT_MINOR) + "); rebuild the engine on this machine" +
                            logger_.last_error());
        if (engine->getNbOptimizationProfiles() != static_cast<int>(sidecar_.profiles.size()))
            throw Error(PIDTRT_STATUS_FORMAT_ERROR,
                        path + " has " + std::to_string(engine->getNbOptimizationProfiles()) +
                            " optimization profiles but the sidecar lists " + std::to_string(sidecar_.profiles.size()));
        return engine;
    }

    // Wiring rule (docs/formats.md): every cond output is a denoise input of the same name.
    void check_wiring() {
        cond_io_ = list_io(*cond_engine_);
        denoise_io_ = list_io(*denoise_engine_);
        const auto fail = [](const std::string& what) { throw Error(PIDTRT_STATUS_FORMAT_ERROR, "engine wiring: " + what); };
        if (!contains(cond_io_.inputs, "lq_latent")) fail("the cond engine has no 'lq_latent' input");
        for (const std::string& name : cond_io_.inputs)
            if (name != "lq_latent" && name != "degrade_sigma") fail("unexpected cond input '" + name + "'");
        for (const std::string& name : cond_io_.outputs)
            if (!contains(denoise_io_.inputs, name)) fail("cond output '" + name + "' is not a denoise input");
        for (const char* name : {"x", "t", "y"})
            if (!contains(denoise_io_.inputs, name)) fail(std::string("the denoise engine has no '") + name + "' input");
        for (const std::string& name : denoise_io_.inputs)
            if (name != "x" && name != "t" && name != "y" && name != "degrade_sigma" && !contains(cond_io_.outputs, name))
                fail("denoise input '" + name + "' is neither a sampler input nor a cond output");
        if (denoise_io_.outputs != std::vector<std::string>{"velocity"}) fail("the denoise engine must have the single output 'velocity'");
        for (const char* name : {"x", "t", "y", "velocity"})
            if (denoise_engine_->getTensorDataType(name) != nv::DataType::kFLOAT) fail(std::string("'") + name + "' must be float32");
        if (cond_engine_->getTensorDataType("lq_latent") != nv::DataType::kFLOAT) fail("'lq_latent' must be float32");
        for (const std::string& name : cond_io_.outputs)
            if (cond_engine_->getTensorDataType(name.c_str()) != denoise_engine_->getTensorDataType(name.c_str()))
                fail("'" + name + "' has different data types in the cond and denoise engines");
    }

    // The sidecar's profile i must be the engines' optimization profile i (checked on the "x" input).
    void check_profiles() {
        for (size_t i = 0; i < sidecar_.profiles.size(); ++i) {
            const Profile& p = sidecar_.profiles[i];
            const int index = static_cast<int>(i);
            const nv::Dims min = denoise_engine_->getProfileShape("x", index, nv::OptProfileSelector::kMIN);
            const nv::Dims max = denoise_engine_->getProfileShape("x", index, nv::OptProfileSelector::kMAX);
            if (min.nbDims < 0) continue;  // "x" has static dims: setInputShape checks the shape later
            const nv::Dims want_min = make_dims({p.batch.min, 3, p.height.min, p.width.min});
            const nv::Dims want_max = make_dims({p.batch.max, 3, p.height.max, p.width.max});
            if (dims_string(min) != dims_string(want_min) || dims_string(max) != dims_string(want_max))
                throw Error(PIDTRT_STATUS_FORMAT_ERROR,
                            "sidecar profile " + std::to_string(i) + " '" + p.name + "' expects x from " +
                                dims_string(want_min) + " to " + dims_string(want_max) +
                                " but the denoise engine's profile " + std::to_string(i) + " spans " +
                                dims_string(min) + " to " + dims_string(max) + "; rebuild the engine directory");
        }
    }

    ShapeEntry& entry_for(int batch, int width, int height) {
        for (auto& e : entries_)
            if (e->batch == batch && e->width == width && e->height == height) {
                e->last_used = ++use_counter_;
                return *e;
            }
        const int profile = sidecar_.select_profile(width, height, batch);
        if (static_cast<int>(entries_.size()) >= std::max(1, options_.max_cached_shapes)) {
            check_cuda(cudaEventSynchronize(done_), "cudaEventSynchronize");
            entries_.erase(std::min_element(entries_.begin(), entries_.end(),
                                            [](const auto& a, const auto& b) { return a->last_used < b->last_used; }));
        }
        entries_.push_back(make_entry(batch, width, height, profile));
        entries_.back()->last_used = ++use_counter_;
        return *entries_.back();
    }

    TrtPtr<nv::IExecutionContext> make_context(nv::ICudaEngine& engine, int profile, const char* label) {
        TrtPtr<nv::IExecutionContext> ctx(engine.createExecutionContext(nv::ExecutionContextAllocationStrategy::kUSER_MANAGED));
        if (!ctx) throw Error(PIDTRT_STATUS_TENSORRT_ERROR, std::string("cannot create the ") + label + " execution context" + logger_.last_error());
        ctx->setDeviceMemoryV2(scratch_.get(), static_cast<int64_t>(scratch_.bytes()));
        if (!ctx->setOptimizationProfileAsync(profile, capture_stream_))
            throw Error(PIDTRT_STATUS_TENSORRT_ERROR, std::string("cannot select optimization profile ") +
                                                          std::to_string(profile) + " for " + label + logger_.last_error());
        return ctx;
    }

    void set_input(nv::IExecutionContext& ctx, const std::vector<std::string>& inputs, const std::string& name,
                   const nv::Dims& dims, void* address, const char* label) {
        if (!contains(inputs, name)) return;
        if (!ctx.setInputShape(name.c_str(), dims))
            throw Error(PIDTRT_STATUS_TENSORRT_ERROR, std::string(label) + " input '" + name + "' rejects shape " +
                                                          dims_string(dims) + logger_.last_error());
        bind(ctx, name, address, label);
    }

    void bind(nv::IExecutionContext& ctx, const std::string& name, void* address, const char* label) {
        if (!ctx.setTensorAddress(name.c_str(), address))
            throw Error(PIDTRT_STATUS_TENSORRT_ERROR, std::string("cannot bind ") + label + " tensor '" + name + "'" + logger_.last_error());
    }

    std::unique_ptr<ShapeEntry> make_entry(int batch, int width, int height, int profile) {
        // Every context shares scratch_: the profile switch and warm-up below must not run while a previous
        // (asynchronous) decode still executes on it (TensorRT: undefined behaviour), so they wait for it.
        check_cuda(cudaStreamWaitEvent(capture_stream_, done_, 0), "cudaStreamWaitEvent");
        auto e = std::make_unique<ShapeEntry>();
        e->batch = batch;
        e->width = width;
        e->height = height;
        e->profile = profile;
        const int scale = sidecar_.latent.pixels_per_latent();
        const nv::Dims latent_dims = make_dims({batch, sidecar_.latent.channels, height / scale, width / scale});
        const nv::Dims sample_dims = make_dims({batch, 3, height, width});
        const nv::Dims batch_dims = make_dims({batch});
        const nv::Dims y_dims = make_dims({batch, sidecar_.text_max_length, sidecar_.text_embed_dim});
        e->latent = DeviceBuffer(volume(latent_dims) * sizeof(float));
        e->sigma = DeviceBuffer(batch * sizeof(float));
        e->t = DeviceBuffer(batch * sizeof(float));
        e->seed = DeviceBuffer(sizeof(uint64_t));
        e->x = DeviceBuffer(e->sample_elements() * sizeof(float));
        e->v = DeviceBuffer(e->sample_elements() * sizeof(float));
        e->output = DeviceBuffer(e->sample_elements() * sizeof(float));
        e->y = DeviceBuffer(volume(y_dims) * sizeof(float));

        e->cond = make_context(*cond_engine_, profile, "cond");
        set_input(*e->cond, cond_io_.inputs, "lq_latent", latent_dims, e->latent.get(), "cond");
        set_input(*e->cond, cond_io_.inputs, "degrade_sigma", batch_dims, e->sigma.get(), "cond");
        e->denoise = make_context(*denoise_engine_, profile, "denoise");
        set_input(*e->denoise, denoise_io_.inputs, "x", sample_dims, e->x.get(), "denoise");
        set_input(*e->denoise, denoise_io_.inputs, "t", batch_dims, e->t.get(), "denoise");
        set_input(*e->denoise, denoise_io_.inputs, "y", y_dims, e->y.get(), "denoise");
        set_input(*e->denoise, denoise_io_.inputs, "degrade_sigma", batch_dims, e->sigma.get(), "denoise");
        for (const std::string& name : cond_io_.outputs) {
            const nv::Dims dims = e->cond->getTensorShape(name.c_str());
            for (int i = 0; i < dims.nbDims; ++i)
                if (dims.d[i] < 0)
                    throw Error(PIDTRT_STATUS_TENSORRT_ERROR, "cond output '" + name + "' has unresolved shape " + dims_string(dims));
            DeviceBuffer& buffer = e->features[name] =
                DeviceBuffer(volume(dims) * element_size(cond_engine_->getTensorDataType(name.c_str()), name));
            bind(*e->cond, name, buffer.get(), "cond");
            set_input(*e->denoise, denoise_io_.inputs, name, dims, buffer.get(), "denoise");
        }
        const nv::Dims velocity = e->denoise->getTensorShape("velocity");
        if (volume(velocity) != e->sample_elements())
            throw Error(PIDTRT_STATUS_TENSORRT_ERROR, "denoise output 'velocity' has shape " + dims_string(velocity) +
                                                          ", expected " + dims_string(sample_dims));
        bind(*e->denoise, "velocity", e->v.get(), "denoise");

        // One plain run first: TensorRT finishes shape-dependent setup outside the graph capture.
        for (DeviceBuffer* buffer : {&e->latent, &e->sigma, &e->t, &e->x, &e->y})
            check_cuda(cudaMemsetAsync(buffer->get(), 0, buffer->bytes(), capture_stream_), "cudaMemsetAsync");
        enqueue(*e->cond, "cond", capture_stream_);
        enqueue(*e->denoise, "denoise", capture_stream_);
        check_cuda(cudaStreamSynchronize(capture_stream_), "warm-up run of " + std::to_string(width) + "x" + std::to_string(height));
        return e;
    }

    void enqueue(nv::IExecutionContext& ctx, const char* label, cudaStream_t stream) {
        if (!ctx.enqueueV3(stream))
            throw Error(PIDTRT_STATUS_TENSORRT_ERROR, std::string("enqueueV3 of the ") + label + " engine failed" + logger_.last_error());
    }

    // The decode as stream work; the same sequence is captured or run directly.
    void enqueue_decode(ShapeEntry& e, const SamplerPlan& plan, bool injected, int format, bool round_latent,
                        cudaStream_t stream) {
        const size_t n = e.sample_elements();
        if (round_latent) check_cuda(kernels::round_to_bf16(e.latent.get<float>(), e.latent.bytes() / sizeof(float), stream), "bf16 rounding kernel");
        enqueue(*e.cond, "cond", stream);
        const kernels::NoiseSource noise{injected ? e.noise.get<float>() : nullptr, e.seed.get<uint64_t>()};
        check_cuda(kernels::initial_sample(e.x.get<float>(), n, noise, stream), "initial noise kernel");
        for (const SamplerStep& step : plan.steps) {
            check_cuda(kernels::fill(e.t.get<float>(), e.batch, step.net_t, stream), "timestep kernel");
            enqueue(*e.denoise, "denoise", stream);
            if (step.noise_draw < 0)
                check_cuda(kernels::predict_x0(e.x.get<float>(), e.v.get<float>(), n, step.t_c, stream), "x0 kernel");
            else
                check_cuda(kernels::predict_x0_and_renoise(e.x.get<float>(), e.v.get<float>(), n, step.t_c, step.t_n,
                                                           step.one_minus_t_n, noise, step.noise_draw, stream),
                           "re-noise kernel");
        }
        check_cuda(kernels::write_output(e.x.get<float>(), e.output.get(), format, e.batch, e.height, e.width, stream),
                   "output kernel");
    }

    // Captures the decode; on failure returns an empty GraphExec, marks the shape to run without graphs, clears the
    // CUDA error state the failed capture left behind and says so once (the caller then enqueues directly).
    GraphExec capture(ShapeEntry& e, const SamplerPlan& plan, bool injected, int format, bool round_latent) {
        check_cuda(cudaStreamBeginCapture(capture_stream_, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
        cudaGraph_t graph = nullptr;
        std::string failure;
        try {
            enqueue_decode(e, plan, injected, format, round_latent, capture_stream_);
        } catch (const Error& error) {
            failure = error.what();
        }
        const cudaError_t ended = cudaStreamEndCapture(capture_stream_, &graph);
        if (failure.empty() && ended != cudaSuccess) failure = std::string("cudaStreamEndCapture: ") + cudaGetErrorName(ended);
        cudaGraphExec_t exec = nullptr;
        if (failure.empty()) {
#if CUDART_VERSION >= 12000
            const cudaError_t made = cudaGraphInstantiate(&exec, graph, 0);
#else
            const cudaError_t made = cudaGraphInstantiate(&exec, graph, nullptr, nullptr, 0);
#endif
            if (made != cudaSuccess) failure = std::string("cudaGraphInstantiate: ") + cudaGetErrorName(made);
        }
        if (graph) cudaGraphDestroy(graph);
        if (failure.empty()) return GraphExec(exec);
        cudaGetLastError();  // clear the error the failed capture left, so no later check reports it
        e.capture_failed = true;
        std::fprintf(stderr, "[pidtrt] warning: could not capture the %dx%d batch %d decode in a CUDA graph (%s); "
                             "running it without graphs\n", e.width, e.height, e.batch, failure.c_str());
        return GraphExec();
    }

    // Engines are tuned for the GPU model that built them; another model of the same compute capability runs them,
    // maybe slower (TensorRT warns too), so say so and how to fix it.
    void warn_if_other_gpu_model() const {
        cudaDeviceProp prop{};
        if (cudaGetDeviceProperties(&prop, options_.device) != cudaSuccess || sidecar_.gpu_name == "(unknown GPU)") return;
        if (sidecar_.gpu_name != prop.name)
            std::fprintf(stderr, "[pidtrt] warning: %s was built on %s, this GPU is %s: it runs, but its kernels were "
                                 "tuned on the other model; rebuild it here (pid-trt build --force) for this GPU's speed\n",
                         sidecar_.name.c_str(), sidecar_.gpu_name.c_str(), prop.name);
    }

    pidtrt_decoder_options options_;
    Sidecar sidecar_;
    Logger logger_;  // outlives every TensorRT object below
    TrtPtr<nv::IRuntime> runtime_;
    TrtPtr<nv::ICudaEngine> cond_engine_, denoise_engine_;
    EngineIO cond_io_, denoise_io_;
    DeviceBuffer scratch_, caption_;
    int caption_batch_ = 0;
    int max_noise_draws_ = 1;
    cudaStream_t capture_stream_ = nullptr;
    cudaEvent_t done_ = nullptr, caption_ready_ = nullptr;
    std::vector<std::unique_ptr<ShapeEntry>> entries_;
    uint64_t use_counter_ = 0;
};

}  // namespace

std::unique_ptr<Decoder> create_decoder(const std::string& engine_dir, const pidtrt_decoder_options& options) {
    return std::make_unique<TrtDecoder>(engine_dir, options);
}

bool built_with_tensorrt() { return true; }

}  // namespace pidtrt

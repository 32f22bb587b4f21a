// pidtrt-decode: print a sidecar's sampler schedule, or decode one latent with the C API.
//
//   pidtrt-decode --print-schedule <sidecar.json | engine-dir>
//   pidtrt-decode --engine-dir DIR --latent lat.f32 --caption y.f32 --width W --height H --out out.ppm
//                 [--steps N] [--sigma S] [--seed N] [--noise noise.f32] [--no-graph]
//
// Raw files are little-endian float32 in C order: latent [1, C, h, w], caption [1, L, D], noise
// [draws, 1, 3, H, W]. The output is a binary PPM (8-bit RGB, upstream's truncating conversion).
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "pid_trt.h"

namespace {

constexpr const char* kUsage =
    "usage: pidtrt-decode --print-schedule <sidecar.json | engine-dir>\n"
    "       pidtrt-decode --engine-dir DIR --latent lat.f32 --caption y.f32 --width W --height H --out out.ppm\n"
    "                     [--steps N] [--sigma S] [--seed N] [--noise noise.f32] [--no-graph]\n";

struct Failure {
    std::string message;
};

void check(pidtrt_status status) {
    if (status != PIDTRT_STATUS_OK) throw Failure{pidtrt_last_error()};
}

void check_cuda(cudaError_t status, const char* what) {
    if (status != cudaSuccess) throw Failure{std::string(what) + ": " + cudaGetErrorString(status)};
}

// Shortest decimal that reads back as the same float32.
std::string float_json(float value) {
    char buffer[32];
    const auto result = std::to_chars(buffer, buffer + sizeof buffer, value);
    return std::string(buffer, result.ptr);
}

std::string floats_json(const std::vector<float>& values) {
    std::string out = "[";
    for (size_t i = 0; i < values.size(); ++i) out += (i ? ", " : "") + float_json(values[i]);
    return out + "]";
}

std::string string_json(const std::string& text) {
    std::string out = "\"";
    for (const char c : text) {
        if (c == '"' || c == '\\') out += '\\';
        out += c;
    }
    return out + "\"";
}

std::vector<float> query(pidtrt_status (*fn)(const pidtrt_sidecar*, int32_t, float*, int32_t, int32_t*),
                         const pidtrt_sidecar* sidecar, int steps) {
    int32_t count = 0;
    check(fn(sidecar, steps, nullptr, 0, &count));
    std::vector<float> values(count);
    check(fn(sidecar, steps, values.data(), count, &count));
    return values;
}

std::string range_json(const int32_t r[3]) {
    return "[" + std::to_string(r[0]) + ", " + std::to_string(r[1]) + ", " + std::to_string(r[2]) + "]";
}

int print_schedule(const std::string& path) {
    pidtrt_sidecar* sidecar = nullptr;
    check(pidtrt_sidecar_open(path.c_str(), &sidecar));
    std::unique_ptr<pidtrt_sidecar, void (*)(pidtrt_sidecar*)> owner(sidecar, pidtrt_sidecar_close);
    const char* name = nullptr;
    int32_t default_steps = 0, count = 0;
    float timescale = 0;
    check(pidtrt_sidecar_name(sidecar, &name));
    check(pidtrt_sidecar_default_steps(sidecar, &default_steps));
    check(pidtrt_sidecar_timescale(sidecar, &timescale));
    check(pidtrt_sidecar_step_counts(sidecar, nullptr, 0, &count));
    std::vector<int32_t> step_counts(count);
    check(pidtrt_sidecar_step_counts(sidecar, step_counts.data(), count, &count));

    std::ostringstream t_lists, net_timesteps, draws;
    for (size_t i = 0; i < step_counts.size(); ++i) {
        const int steps = step_counts[i];
        const std::string key = (i ? ",\n    \"" : "\n    \"") + std::to_string(steps) + "\": ";
        int32_t n = 0;
        check(pidtrt_sidecar_noise_draws(sidecar, steps, &n));
        t_lists << key << floats_json(query(pidtrt_sidecar_t_list, sidecar, steps));
        net_timesteps << key << floats_json(query(pidtrt_sidecar_net_timesteps, sidecar, steps));
        draws << key << n;
    }
    int32_t profiles = 0;
    check(pidtrt_sidecar_profile_count(sidecar, &profiles));
    std::ostringstream profile_list;
    for (int32_t i = 0; i < profiles; ++i) {
        pidtrt_profile_info p;
        check(pidtrt_sidecar_profile(sidecar, i, &p));
        profile_list << (i ? ",\n    " : "\n    ") << "{\"name\": " << string_json(p.name) << ", \"kind\": \""
                     << (p.is_static ? "static" : "dynamic") << "\", \"batch\": " << range_json(p.batch)
                     << ", \"width\": " << range_json(p.width) << ", \"height\": " << range_json(p.height) << "}";
    }
    std::cout << "{\n  \"name\": " << string_json(name) << ",\n  \"timescale\": " << float_json(timescale)
              << ",\n  \"default_steps\": " << default_steps << ",\n  \"t_lists\": {" << t_lists.str()
              << "\n  },\n  \"net_timesteps\": {" << net_timesteps.str() << "\n  },\n  \"noise_draws\": {"
              << draws.str() << "\n  },\n  \"profiles\": [" << profile_list.str() << "\n  ]\n}\n";
    return 0;
}

std::vector<float> read_floats(const std::string& path, size_t expected, const char* what) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Failure{std::string("cannot read ") + what + " file " + path};
    std::vector<float> data(expected);
    in.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(expected * sizeof(float)));
    if (static_cast<size_t>(in.gcount()) != expected * sizeof(float) || in.peek() != EOF)
        throw Failure{std::string(what) + " file " + path + " must hold exactly " + std::to_string(expected) +
                      " float32 values"};
    return data;
}

struct DeviceMemory {
    void* ptr = nullptr;
    explicit DeviceMemory(size_t bytes) { check_cuda(cudaMalloc(&ptr, bytes), "cudaMalloc"); }
    ~DeviceMemory() { cudaFree(ptr); }
    DeviceMemory(const DeviceMemory&) = delete;
    DeviceMemory& operator=(const DeviceMemory&) = delete;
};

int decode(std::map<std::string, std::string>& args, bool use_graph) {
    for (const char* required : {"--engine-dir", "--latent", "--caption", "--width", "--height", "--out"})
        if (!args.count(required)) throw Failure{std::string("missing ") + required + "\n" + kUsage};
    pidtrt_decoder_options options;
    pidtrt_decoder_options_init(&options);
    options.use_cuda_graph = use_graph ? 1 : 0;
    pidtrt_decoder* decoder = nullptr;
    check(pidtrt_decoder_create(args["--engine-dir"].c_str(), &options, &decoder));
    std::unique_ptr<pidtrt_decoder, void (*)(pidtrt_decoder*)> owner(decoder, pidtrt_decoder_destroy);
    const pidtrt_sidecar* sidecar = pidtrt_decoder_sidecar(decoder);

    pidtrt_decode_params params;
    pidtrt_decode_params_init(&params);
    params.width = std::stoi(args["--width"]);
    params.height = std::stoi(args["--height"]);
    params.steps = args.count("--steps") ? std::stoi(args["--steps"]) : 0;
    params.seed = args.count("--seed") ? std::stoull(args["--seed"]) : 0;
    const float sigma = args.count("--sigma") ? std::stof(args["--sigma"]) : 0.0f;
    params.degrade_sigma = &sigma;
    params.output_format = PIDTRT_OUTPUT_U8_NHWC;

    pidtrt_latent_info latent;
    int32_t text_length = 0, text_dim = 0, steps = params.steps, draws = 0;
    check(pidtrt_sidecar_latent(sidecar, &latent));
    check(pidtrt_sidecar_text(sidecar, &text_length, &text_dim));
    if (!steps) check(pidtrt_sidecar_default_steps(sidecar, &steps));
    check(pidtrt_sidecar_noise_draws(sidecar, steps, &draws));
    const int scale = latent.down_factor * latent.sr_scale;
    const size_t latent_size = size_t(latent.channels) * (params.height / scale) * (params.width / scale);
    const size_t caption_size = size_t(text_length) * text_dim;
    const size_t pixels = size_t(params.width) * params.height;

    const std::vector<float> latent_host = read_floats(args["--latent"], latent_size, "latent");
    const std::vector<float> caption_host = read_floats(args["--caption"], caption_size, "caption");
    DeviceMemory latent_dev(latent_size * sizeof(float)), output_dev(pixels * 3);
    check_cuda(cudaMemcpy(latent_dev.ptr, latent_host.data(), latent_size * sizeof(float), cudaMemcpyHostToDevice),
               "copying the latent");
    params.latent = static_cast<const float*>(latent_dev.ptr);
    params.output = output_dev.ptr;
    std::unique_ptr<DeviceMemory> noise_dev;
    if (args.count("--noise")) {
        const size_t noise_size = size_t(draws) * 3 * pixels;
        const std::vector<float> noise = read_floats(args["--noise"], noise_size, "noise");
        noise_dev = std::make_unique<DeviceMemory>(noise_size * sizeof(float));
        check_cuda(cudaMemcpy(noise_dev->ptr, noise.data(), noise_size * sizeof(float), cudaMemcpyHostToDevice),
                   "copying the noise");
        params.noise = static_cast<const float*>(noise_dev->ptr);
    }
    check(pidtrt_decoder_set_caption_embedding(decoder, caption_host.data(), 1, nullptr));
    check(pidtrt_decoder_decode(decoder, &params));
    std::vector<unsigned char> rgb(pixels * 3);
    check_cuda(cudaMemcpy(rgb.data(), output_dev.ptr, rgb.size(), cudaMemcpyDeviceToHost), "copying the output");

    std::ofstream out(args["--out"], std::ios::binary);
    out << "P6\n" << params.width << " " << params.height << "\n255\n";
    out.write(reinterpret_cast<const char*>(rgb.data()), static_cast<std::streamsize>(rgb.size()));
    if (!out) throw Failure{"cannot write " + args["--out"]};
    std::cerr << "wrote " << args["--out"] << " (" << params.width << "x" << params.height << ", " << steps
              << " steps)\n";
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        std::map<std::string, std::string> args;
        bool use_graph = true;
        for (int i = 1; i < argc; ++i) {
            const std::string arg = argv[i];
            if (arg == "--help" || arg == "-h") {
                std::cout << kUsage;
                return 0;
            }
            if (arg == "--no-graph") {
                use_graph = false;
                continue;
            }
            if (arg.rfind("--", 0) != 0 || i + 1 >= argc) throw Failure{"unexpected argument '" + arg + "'\n" + kUsage};
            args[arg] = argv[++i];
        }
        if (args.count("--print-schedule")) return print_schedule(args["--print-schedule"]);
        if (args.empty()) throw Failure{std::string("nothing to do\n") + kUsage};
        return decode(args, use_graph);
    } catch (const Failure& failure) {
        std::cerr << "error: " << failure.message << "\n";
    } catch (const std::exception& e) {  // std::stoi and friends on a malformed number
        std::cerr << "error: bad argument: " << e.what() << "\n";
    }
    return 2;
}

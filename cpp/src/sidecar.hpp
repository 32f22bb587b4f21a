// The engine directory's JSON sidecar (docs/formats.md, format_version 1) and the queries on it.
#pragma once

#include <array>
#include <map>
#include <string>
#include <vector>

namespace pidtrt {

struct Range {
    int min = 0, opt = 0, max = 0;
    bool contains(int value) const { return min <= value && value <= max; }
};

struct Profile {
    std::string name;
    bool is_static = false;
    Range batch, width, height;
};

struct LatentInfo {
    int channels = 0, down_factor = 0, sr_scale = 0;
    int pixels_per_latent() const { return down_factor * sr_scale; }
};

struct Sidecar {
    std::string path;  // the JSON file
    std::string name;
    std::string precision;
    std::string tensorrt_version = "(unknown)", gpu_name = "(unknown GPU)";  // optional, for messages
    LatentInfo latent;
    int text_max_length = 0, text_embed_dim = 0;
    float timescale = 0.0f;
    int default_steps = 0;
    std::map<int, std::vector<float>> t_lists;  // steps -> steps + 1 values, as float32
    std::string cond_engine_file, denoise_engine_file;  // relative to the sidecar's directory
    std::vector<Profile> profiles;

    // The t-list for `steps` steps; throws NOT_FOUND naming the available step counts.
    const std::vector<float>& t_list(int steps) const;
    // float32(t_c * timescale) for each of the `steps` denoise calls.
    std::vector<float> net_timesteps(int steps) const;
    // 1 + number of steps with t_n > 0.
    int noise_draws(int steps) const;
    // First static exact match, else the first dynamic profile containing the shape; else NOT_FOUND.
    int select_profile(int width, int height, int batch) const;
    // Throws INVALID_ARGUMENT unless width/height fit the net (multiples of 16 and of the latent scale).
    void check_output_shape(int width, int height, int batch) const;
    std::string directory() const;
};

// Parses a sidecar from JSON text; `origin` names the source in error messages.
Sidecar parse_sidecar(const std::string& json_text, const std::string& origin);
// Reads `path`: a <name>.json sidecar or an engine directory holding exactly one.
Sidecar load_sidecar(const std::string& path);

}  // namespace pidtrt

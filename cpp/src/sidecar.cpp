#include "sidecar.hpp"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "error.hpp"

namespace pidtrt {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

constexpr const char* kFormat = "pid-trt-engine";

// Reads fields of one JSON object and names the full field path in every error.
class Reader {
public:
    Reader(const json& node, std::string prefix, const std::string& origin)
        : node_(node), prefix_(std::move(prefix)), origin_(origin) {}

    const json& field(const std::string& key) const {
        if (!node_.is_object() || !node_.contains(key)) fail("missing field '" + where(key) + "'");
        return node_.at(key);
    }
    Reader object(const std::string& key) const {
        const json& value = field(key);
        if (!value.is_object()) fail("field '" + where(key) + "' must be an object");
        return Reader(value, where(key), origin_);
    }
    // A file name relative to the sidecar's directory that stays inside it (no absolute path, no '..').
    std::string inside_file(const std::string& key) const {
        const std::string name = string(key);
        const std::filesystem::path path(name);
        bool escapes = name.empty() || path.is_absolute() || path.has_root_name();
        for (const auto& part : path) escapes = escapes || part == "..";
        if (escapes) fail("field '" + where(key) + "' must name a file inside the engine directory, not '" + name + "'");
        return name;
    }
    std::string string(const std::string& key) const {
        const json& value = field(key);
        if (!value.is_string()) fail("field '" + where(key) + "' must be a string");
        return value.get<std::string>();
    }
    double number(const std::string& key) const { return as_number(field(key), where(key)); }
    int positive_int(const std::string& key) const { return as_positive_int(field(key), where(key)); }

    double as_number(const json& value, const std::string& path) const {
        if (!value.is_number()) fail("field '" + path + "' must be a number");
        return value.get<double>();
    }
    int as_positive_int(const json& value, const std::string& path) const {
        if (!value.is_number_integer() || value.get<long long>() <= 0 || value.get<long long>() > (1 << 30))
            fail("field '" + path + "' must be a positive integer");
        return value.get<int>();
    }
    Range range(const std::string& key) const {
        const json& value = field(key);
        const std::string path = where(key);
        if (!value.is_array() || value.size() != 3) fail("field '" + path + "' must be [min, opt, max]");
        Range r{as_positive_int(value[0], path + "[0]"), as_positive_int(value[1], path + "[1]"),
                as_positive_int(value[2], path + "[2]")};
        if (!(r.min <= r.opt && r.opt <= r.max)) fail("field '" + path + "' must satisfy min <= opt <= max");
        return r;
    }
    std::string where(const std::string& key) const { return prefix_.empty() ? key : prefix_ + "." + key; }
    [[noreturn]] void fail(const std::string& what) const {
        throw Error(PIDTRT_STATUS_FORMAT_ERROR, "sidecar " + origin_ + ": " + what);
    }
    const json& node() const { return node_; }

private:
    const json& node_;
    std::string prefix_;
    const std::string& origin_;
};

std::vector<float> parse_t_list(const Reader& sampler, const std::string& key, const json& values, int steps) {
    const std::string path = "sampler.t_lists." + key;
    if (!values.is_array() || values.size() != static_cast<size_t>(steps) + 1)
        sampler.fail("field '" + path + "' must be a list of " + std::to_string(steps + 1) + " numbers");
    std::vector<float> t;
    for (const json& value : values) {
        // Through double, like torch.tensor(list_of_floats, dtype=float32) upstream.
        const double v = sampler.as_number(value, path);
        if (!(v >= 0.0 && v <= 1.0)) sampler.fail("field '" + path + "' has a value outside [0, 1]");
        t.push_back(static_cast<float>(v));
    }
    for (size_t i = 1; i < t.size(); ++i)
        if (t[i] > t[i - 1]) sampler.fail("field '" + path + "' must be non-increasing");
    if (t.back() != 0.0f) sampler.fail("field '" + path + "' must end at 0");
    return t;
}

void parse_sampler(const Reader& root, Sidecar& sc) {
    const Reader sampler = root.object("sampler");
    const std::string kind = sampler.string("kind");
    if (kind == "teacher")
        throw Error(PIDTRT_STATUS_UNSUPPORTED,
                    "sidecar " + sc.path + ": " + sc.name + " holds an undistilled teacher checkpoint (sampler kind " +
                        "'teacher': DPM-Solver++ with classifier-free guidance); the C++ runtime runs only the " +
                        "distilled student sampler, so decode it with the Python runtime (pid-trt decode --engine-dir)");
    if (kind != "distilled")
        sampler.fail("sampler kind '" + kind + "' is not supported by the C++ runtime (only 'distilled')");
    const double timescale = sampler.number("timescale");
    if (!(timescale > 0.0)) sampler.fail("field 'sampler.timescale' must be positive");
    sc.timescale = static_cast<float>(timescale);
    sc.default_steps = sampler.positive_int("default_steps");

    const json& lists = sampler.field("t_lists");
    if (!lists.is_object() || lists.empty()) sampler.fail("field 'sampler.t_lists' must be a non-empty object");
    for (const auto& [key, values] : lists.items()) {
        size_t used = 0;
        int steps = 0;
        try {
            steps = std::stoi(key, &used);
        } catch (const std::exception&) {
            used = 0;
        }
        if (used != key.size() || steps <= 0)
            sampler.fail("key '" + key + "' of 'sampler.t_lists' must be a positive step count");
        sc.t_lists[steps] = parse_t_list(sampler, key, values, steps);
    }
    if (!sc.t_lists.count(sc.default_steps))
        sampler.fail("field 'sampler.t_lists' has no entry for default_steps " + std::to_string(sc.default_steps));
}

void parse_profiles(const Reader& root, Sidecar& sc) {
    const json& profiles = root.field("profiles");
    if (!profiles.is_array() || profiles.empty()) root.fail("field 'profiles' must be a non-empty list");
    for (size_t i = 0; i < profiles.size(); ++i) {
        const std::string prefix = "profiles[" + std::to_string(i) + "]";
        if (!profiles[i].is_object()) root.fail("field '" + prefix + "' must be an object");
        const Reader entry(profiles[i], prefix, sc.path);
        Profile p;
        p.name = entry.string("name");
        const std::string kind = entry.string("kind");
        if (kind != "static" && kind != "dynamic")
            entry.fail("field '" + prefix + ".kind' must be 'static' or 'dynamic', not '" + kind + "'");
        p.is_static = kind == "static";
        p.batch = entry.range("batch");
        p.width = entry.range("width");
        p.height = entry.range("height");
        if (p.is_static && (p.width.min != p.width.max || p.height.min != p.height.max))
            entry.fail("static profile '" + p.name + "' must have min == max for width and height");
        sc.profiles.push_back(p);
    }
}

std::string describe(const Range& r) {
    return r.min == r.max ? std::to_string(r.min) : std::to_string(r.min) + ".." + std::to_string(r.max);
}

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error(PIDTRT_STATUS_IO_ERROR, "cannot read sidecar " + path);
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
}

std::string find_sidecar_in(const fs::path& dir) {
    std::vector<fs::path> found;
    for (const auto& entry : fs::directory_iterator(dir))
        if (entry.is_regular_file() && entry.path().extension() == ".json") found.push_back(entry.path());
    if (found.size() == 1) return found.front().string();
    if (found.empty())
        throw Error(PIDTRT_STATUS_IO_ERROR, "no <name>.json sidecar in engine directory " + dir.string() +
                                                " (an engine without its sidecar is unfinished; rerun pid-trt build)");
    std::string names;
    for (const auto& p : found) names += (names.empty() ? "" : ", ") + p.filename().string();
    throw Error(PIDTRT_STATUS_INVALID_ARGUMENT,
                "engine directory " + dir.string() + " holds several sidecars (" + names + "); pass the .json path");
}

}  // namespace

Sidecar parse_sidecar(const std::string& json_text, const std::string& origin) {
    json doc;
    try {
        doc = json::parse(json_text);
    } catch (const json::parse_error& e) {
        throw Error(PIDTRT_STATUS_FORMAT_ERROR, "sidecar " + origin + ": invalid JSON: " + e.what());
    }
    Sidecar sc;
    sc.path = origin;
    const Reader root(doc, "", sc.path);
    if (!doc.is_object()) root.fail("top level must be a JSON object");

    const std::string format = root.string("format");
    if (format == "pid-trt-onnx")
        root.fail("this is an ONNX-directory manifest, not an engine sidecar; build engines with 'pid-trt build'");
    if (format != kFormat) root.fail("format is '" + format + "', expected '" + kFormat + "'");
    const json& version = root.field("format_version");
    if (!version.is_number_integer() || version.get<long long>() != PIDTRT_SIDECAR_FORMAT_VERSION)
        root.fail("unsupported format_version " + version.dump() + " (this runtime reads " +
                  std::to_string(PIDTRT_SIDECAR_FORMAT_VERSION) +
                  "); rebuild the engines or use a matching pidtrt runtime");

    sc.name = root.string("name");
    sc.precision = root.string("precision");
    const Reader latent = root.object("latent");
    sc.latent = {latent.positive_int("channels"), latent.positive_int("down_factor"), latent.positive_int("sr_scale")};
    const Reader text = root.object("text");
    sc.text_max_length = text.positive_int("max_length");
    sc.text_embed_dim = text.positive_int("embed_dim");
    parse_sampler(root, sc);
    const Reader engines = root.object("engines");
    sc.cond_engine_file = engines.object("cond").inside_file("file");
    sc.denoise_engine_file = engines.object("denoise").inside_file("file");
    parse_profiles(root, sc);
    if (doc.contains("tensorrt_version") && doc["tensorrt_version"].is_string())
        sc.tensorrt_version = doc["tensorrt_version"].get<std::string>();
    if (doc.contains("gpu") && doc["gpu"].is_object() && doc["gpu"].contains("name") && doc["gpu"]["name"].is_string())
        sc.gpu_name = doc["gpu"]["name"].get<std::string>();
    return sc;
}

Sidecar load_sidecar(const std::string& path) {
    std::error_code ec;
    const std::string file = fs::is_directory(path, ec) ? find_sidecar_in(path) : path;
    return parse_sidecar(read_file(file), file);
}

std::string Sidecar::directory() const {
    return fs::path(path).parent_path().string();
}

const std::vector<float>& Sidecar::t_list(int steps) const {
    const auto found = t_lists.find(steps);
    if (found != t_lists.end()) return found->second;
    std::string available;
    for (const auto& entry : t_lists) available += (available.empty() ? "" : ", ") + std::to_string(entry.first);
    throw Error(PIDTRT_STATUS_NOT_FOUND, "sidecar " + path + " has no t-list for " + std::to_string(steps) +
                                             " steps (sampler.t_lists has: " + available + ")");
}

std::vector<float> Sidecar::net_timesteps(int steps) const {
    const std::vector<float>& t = t_list(steps);
    std::vector<float> out;
    // float32 product, as upstream's fp32 tensor times the Python scalar timescale.
    for (int i = 0; i < steps; ++i) out.push_back(t[i] * timescale);
    return out;
}

int Sidecar::noise_draws(int steps) const {
    const std::vector<float>& t = t_list(steps);
    int draws = 1;
    for (int i = 1; i <= steps; ++i) draws += t[i] > 0.0f ? 1 : 0;
    return draws;
}

int Sidecar::select_profile(int width, int height, int batch) const {
    for (size_t i = 0; i < profiles.size(); ++i) {
        const Profile& p = profiles[i];
        if (p.is_static && p.width.min == width && p.height.min == height && p.batch.contains(batch))
            return static_cast<int>(i);
    }
    for (size_t i = 0; i < profiles.size(); ++i) {
        const Profile& p = profiles[i];
        if (!p.is_static && p.width.contains(width) && p.height.contains(height) && p.batch.contains(batch))
            return static_cast<int>(i);
    }
    std::string available;
    for (const Profile& p : profiles)
        available += (available.empty() ? "" : "; ") + p.name + " (" + (p.is_static ? "static " : "dynamic ") +
                     describe(p.width) + "x" + describe(p.height) + ", batch " + describe(p.batch) + ")";
    throw Error(PIDTRT_STATUS_NOT_FOUND, "no engine profile of " + name + " covers " + std::to_string(width) + "x" +
                                             std::to_string(height) + " (WxH) with batch " + std::to_string(batch) +
                                             "; available profiles: " + available);
}

void Sidecar::check_output_shape(int width, int height, int batch) const {
    const int scale = latent.pixels_per_latent();
    if (batch < 1) throw Error(PIDTRT_STATUS_INVALID_ARGUMENT, "batch must be >= 1, got " + std::to_string(batch));
    for (const auto& [label, size] : {std::pair<const char*, int>{"width", width}, {"height", height}}) {
        if (size <= 0 || size % 16 != 0 || size % scale != 0)
            throw Error(PIDTRT_STATUS_INVALID_ARGUMENT,
                        std::string("output ") + label + " " + std::to_string(size) +
                            " must be a positive multiple of 16 and of the latent scale " + std::to_string(scale) +
                            " (down_factor * sr_scale)");
    }
}

}  // namespace pidtrt

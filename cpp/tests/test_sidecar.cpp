// Sidecar parsing: the fixture, engine-directory lookup, and readable errors for bad files.
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "check.hpp"
#include "error.hpp"
#include "sidecar.hpp"

namespace fs = std::filesystem;
using nlohmann::json;
using pidtrt::Error;

namespace {

json fixture() {
    std::ifstream in(PIDTRT_FIXTURE);
    return json::parse(in);
}

// Parses `doc` and expects a FORMAT_ERROR whose message contains `part`.
void expect_format_error(const json& doc, const std::string& part) {
    CHECK_THROWS(pidtrt::parse_sidecar(doc.dump(), "test.json"), Error,
                 e.status() == PIDTRT_STATUS_FORMAT_ERROR && check::contains(e.what(), part) &&
                     check::contains(e.what(), "sidecar test.json"));
}

fs::path scratch_dir(const std::string& name) {
    const fs::path dir = fs::path(PIDTRT_TEST_TMP) / name;
    fs::remove_all(dir);
    fs::create_directories(dir);
    return dir;
}

}  // namespace

TEST(fixture_parses) {
    const pidtrt::Sidecar sc = pidtrt::load_sidecar(PIDTRT_FIXTURE);
    CHECK_EQ(sc.name, std::string("pid_tiny_fixture"));
    CHECK_EQ(sc.precision, std::string("fp32"));
    CHECK_EQ(sc.latent.channels, 16);
    CHECK_EQ(sc.latent.down_factor, 8);
    CHECK_EQ(sc.latent.sr_scale, 4);
    CHECK_EQ(sc.latent.pixels_per_latent(), 32);
    CHECK_EQ(sc.text_max_length, 300);
    CHECK_EQ(sc.text_embed_dim, 2304);
    CHECK_EQ(sc.timescale, 1000.0f);
    CHECK_EQ(sc.default_steps, 4);
    CHECK_EQ(sc.t_lists.size(), size_t(8));
    CHECK_EQ(sc.cond_engine_file, std::string("pid_tiny_fixture.cond.engine"));
    CHECK_EQ(sc.denoise_engine_file, std::string("pid_tiny_fixture.denoise.engine"));
    CHECK_EQ(sc.profiles.size(), size_t(3));
    CHECK(sc.profiles[0].is_static && !sc.profiles[2].is_static);
    CHECK_EQ(sc.profiles[2].width.max, 1024);
    CHECK_EQ(sc.tensorrt_version, std::string("10.13.0"));
    CHECK_EQ(fs::path(sc.directory()), fs::path(PIDTRT_FIXTURE).parent_path());
}

TEST(engine_directory_lookup) {
    const fs::path dir = scratch_dir("engine_dir");
    fs::copy_file(PIDTRT_FIXTURE, dir / "pid_tiny_fixture.json");
    CHECK_EQ(pidtrt::load_sidecar(dir.string()).name, std::string("pid_tiny_fixture"));
    fs::copy_file(PIDTRT_FIXTURE, dir / "other.json");
    CHECK_THROWS(pidtrt::load_sidecar(dir.string()), Error,
                 e.status() == PIDTRT_STATUS_INVALID_ARGUMENT && check::contains(e.what(), "several sidecars"));
    const fs::path empty = scratch_dir("empty_dir");
    CHECK_THROWS(pidtrt::load_sidecar(empty.string()), Error,
                 e.status() == PIDTRT_STATUS_IO_ERROR && check::contains(e.what(), "no <name>.json sidecar"));
    CHECK_THROWS(pidtrt::load_sidecar((empty / "absent.json").string()), Error,
                 e.status() == PIDTRT_STATUS_IO_ERROR && check::contains(e.what(), "absent.json"));
}

TEST(missing_fields_are_named) {
    for (const std::string pointer : {"/sampler/t_lists", "/sampler/timescale", "/latent/channels", "/text/embed_dim",
                                      "/engines/cond/file", "/engines/denoise", "/profiles", "/name", "/format",
                                      "/format_version", "/profiles/1/height"}) {
        json doc = fixture();
        const json::json_pointer ptr(pointer);
        doc[ptr.parent_pointer()].erase(ptr.back());
        std::string dotted = pointer.substr(1);
        for (char& c : dotted) c = c == '/' ? '.' : c;
        if (pointer == "/profiles/1/height") dotted = "profiles[1].height";
        expect_format_error(doc, "missing field '" + dotted + "'");
    }
}

TEST(wrong_format_version) {
    json doc = fixture();
    doc["format_version"] = 2;
    expect_format_error(doc, "unsupported format_version 2 (this runtime reads 1)");
    doc["format_version"] = "1";
    expect_format_error(doc, "unsupported format_version \"1\"");
}

TEST(wrong_format) {
    json doc = fixture();
    doc["format"] = "pid-trt-onnx";
    expect_format_error(doc, "ONNX-directory manifest");
    doc["format"] = "something";
    expect_format_error(doc, "format is 'something', expected 'pid-trt-engine'");
}

TEST(invalid_json) {
    CHECK_THROWS(pidtrt::parse_sidecar("{\"format\": ", "broken.json"), Error,
                 e.status() == PIDTRT_STATUS_FORMAT_ERROR && check::contains(e.what(), "invalid JSON"));
    CHECK_THROWS(pidtrt::parse_sidecar("[1, 2]", "list.json"), Error,
                 check::contains(e.what(), "top level must be a JSON object"));
}

TEST(bad_values) {
    json doc = fixture();
    doc["latent"]["channels"] = -3;
    expect_format_error(doc, "'latent.channels' must be a positive integer");

    doc = fixture();
    doc["sampler"]["t_lists"]["4"] = {0.999, 0.866, 0.0};
    expect_format_error(doc, "'sampler.t_lists.4' must be a list of 5 numbers");
    doc["sampler"]["t_lists"]["4"] = {0.999, 0.866, 0.634, 0.342, 0.1};
    expect_format_error(doc, "'sampler.t_lists.4' must end at 0");
    doc["sampler"]["t_lists"]["4"] = {0.5, 0.866, 0.634, 0.342, 0.0};
    expect_format_error(doc, "must be non-increasing");
    doc["sampler"]["t_lists"]["4"] = {1.5, 0.866, 0.634, 0.342, 0.0};
    expect_format_error(doc, "outside [0, 1]");
    doc["sampler"]["t_lists"]["4"] = {"a", 0.866, 0.634, 0.342, 0.0};
    expect_format_error(doc, "'sampler.t_lists.4' must be a number");

    doc = fixture();
    doc["sampler"]["t_lists"]["four"] = {1.0, 0.0};
    expect_format_error(doc, "key 'four' of 'sampler.t_lists' must be a positive step count");

    doc = fixture();
    doc["sampler"]["default_steps"] = 9;
    expect_format_error(doc, "no entry for default_steps 9");

    doc = fixture();
    doc["sampler"]["kind"] = "dpm";
    expect_format_error(doc, "sampler kind 'dpm' is not supported");

    doc = fixture();
    doc["profiles"][0]["width"] = {256, 512, 512};
    expect_format_error(doc, "static profile '512x512' must have min == max");
    doc = fixture();
    doc["profiles"][2]["height"] = {512, 256, 1024};
    expect_format_error(doc, "'profiles[2].height' must satisfy min <= opt <= max");
    doc = fixture();
    doc["profiles"][2]["kind"] = "elastic";
    expect_format_error(doc, "'profiles[2].kind' must be 'static' or 'dynamic'");
    doc = fixture();
    doc["profiles"] = json::array();
    expect_format_error(doc, "'profiles' must be a non-empty list");

    doc = fixture();
    doc["engines"]["cond"]["file"] = "../elsewhere/pid.cond.engine";
    expect_format_error(doc, "'engines.cond.file' must name a file inside the engine directory");
    doc = fixture();
    doc["engines"]["denoise"]["file"] = "/abs/pid.denoise.engine";
    expect_format_error(doc, "'engines.denoise.file' must name a file inside the engine directory");
}

TEST(teacher_engines_are_refused) {
    json doc = fixture();
    doc["sampler"] = {{"kind", "teacher"}, {"timescale", 1000.0}, {"default_steps", 25}, {"default_cfg", 5.0},
                      {"time_grid", {{"rule", "time_uniform_flow"}, {"t_end", 0.001}}}};
    CHECK_THROWS(pidtrt::parse_sidecar(doc.dump(), "teacher.json"), Error,
                 e.status() == PIDTRT_STATUS_UNSUPPORTED && check::contains(e.what(), "teacher checkpoint") &&
                     check::contains(e.what(), "only the distilled student sampler") &&
                     check::contains(e.what(), "pid-trt decode"));
}

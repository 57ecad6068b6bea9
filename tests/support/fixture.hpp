// A reader of the golden fixtures that scripts/gen_fixtures.py writes (format documented at the
// top of that script), and the helpers of the tests that run the script live against PyTorch.
#pragma once

#include "common/tensor/param_layout.hpp"
#include "common/util/fs.hpp"
#include "ptrain/build_config.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

namespace ptrain::testing {

constexpr int kFixtureVersion = 1;

// ---- fixture reader ---------------------------------------------------------------------------

struct Fixture {
  std::string path;  // the manifest
  nlohmann::json m;
  std::string blob;

  const nlohmann::json* entry(const std::string& name) const {
    for (const auto& t : m.at("tensors")) {
      if (t.at("name") == name) return &t;
    }
    return nullptr;
  }
  bool has(const std::string& name) const { return entry(name) != nullptr; }

  template <typename T>
  std::vector<T> get(const std::string& name, const char* dtype) const {
    const nlohmann::json* e = entry(name);
    if (e == nullptr) throw std::runtime_error(fmt::format("{}: no tensor '{}'", path, name));
    if (e->at("dtype") != dtype) {
      throw std::runtime_error(fmt::format("{}: tensor '{}' is {}, expected {}", path, name,
                                           e->at("dtype").get<std::string>(), dtype));
    }
    const size_t off = e->at("offset"), nbytes = e->at("nbytes");
    if (off + nbytes > blob.size() || nbytes % sizeof(T) != 0) {
      throw std::runtime_error(fmt::format("{}: tensor '{}' lies outside the blob", path, name));
    }
    std::vector<T> v(nbytes / sizeof(T));
    std::memcpy(v.data(), blob.data() + off, nbytes);  // little-endian host assumed (x86-64)
    return v;
  }
  std::vector<float> f32(const std::string& name) const { return get<float>(name, "float32"); }
  std::vector<int32_t> i32(const std::string& name) const { return get<int32_t>(name, "int32"); }
  std::vector<double> f64(const std::string& name) const { return get<double>(name, "float64"); }

  int64_t cfg(const char* key) const { return m.at("config").at(key).get<int64_t>(); }
  ModelDims dims() const {
    ModelDims d;
    d.V = cfg("V"), d.Vp = cfg("Vp"), d.T = cfg("T"), d.L = cfg("L"), d.NH = cfg("NH"),
    d.C = cfg("C");
    if (m.at("config").value("arch", "gpt") == "bert") d.arch = ModelArch::kBert;
    d.num_labels = m.at("config").value("num_labels", int64_t{0});
    return d;
  }

  // Tensors "<prefix><hf name>" gathered into a flat vector in the layout's order.
  std::vector<float> flat(const ParamLayout& layout, const std::string& prefix) const {
    std::vector<float> v(static_cast<size_t>(layout.total()));
    for (const auto& t : layout.tensors()) {
      const std::vector<float> x = f32(prefix + t.name);
      if (static_cast<int64_t>(x.size()) != t.count) {
        throw std::runtime_error(fmt::format("{}: '{}{}' has {} values, layout says {}", path,
                                             prefix, t.name, x.size(), t.count));
      }
      std::memcpy(v.data() + t.offset, x.data(), x.size() * sizeof(float));
    }
    return v;
  }
};

inline Fixture load_fixture(const std::string& manifest_path) {
  Fixture f;
  f.path = manifest_path;
  f.m = nlohmann::json::parse(read_file(manifest_path));
  const int version = f.m.value("version", -1);
  if (f.m.value("format", "") != "ptrain-fixture" || version != kFixtureVersion) {
    throw std::runtime_error(fmt::format(
        "{}: fixture format version {} but this test reads version {}; regenerate the fixtures "
        "with `/usr/bin/python3 scripts/gen_fixtures.py`",
        manifest_path, version, kFixtureVersion));
  }
  f.blob = read_file((std::filesystem::path(manifest_path).parent_path() / f.m.at("blob").get<std::string>()).string());
  if (f.blob.size() != f.m.at("blob_bytes").get<size_t>()) {
    throw std::runtime_error(fmt::format("{}: blob has {} bytes, manifest says {}; regenerate",
                                         manifest_path, f.blob.size(),
                                         f.m.at("blob_bytes").get<size_t>()));
  }
  return f;
}

inline std::string fixture_path(const std::string& dir, const std::string& name) {
  return (std::filesystem::path(dir) / (name + ".json")).string();
}

inline bool torch_available() {
  const std::string py = PTRAIN_TORCH_PYTHON;
  if (py.empty()) return false;
  return std::system(fmt::format("'{}' -c 'import torch, numpy' >/dev/null 2>&1", py).c_str()) == 0;
}

struct TorchTempDir {
  TorchTempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "ptrain-test-XXXXXX").string();
    if (mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path = tmpl;
  }
  ~TorchTempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string path;
};

}  // namespace ptrain::testing

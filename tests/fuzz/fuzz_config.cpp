// libFuzzer target: the config parser, YAML and --set overrides (parse_config_text,
// parse_override), as `ptrain run CONFIG --set k=v` sees them. The input is YAML text, optionally
// followed by a line "--set" and one override per line. Invariants:
//   1. Every refusal is a ptrain::Error (ConfigError / UsageError / IoError) with a message; no
//      yaml-cpp exception, std::bad_alloc or other exception escapes.
//   2. An accepted config round-trips: parse_config_text(c.to_yaml()) is equal to c.
#include "common/config/config.hpp"
#include "common/error.hpp"
#include "fuzz_support.hpp"

#include <string>
#include <vector>

using namespace ptrain;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  std::string yaml = text;
  std::vector<std::string> sets;
  if (const auto at = text.find("\n--set\n"); at != std::string::npos) {
    yaml = text.substr(0, at);
    std::string rest = text.substr(at + 7);
    size_t start = 0;
    while (start <= rest.size()) {
      const size_t nl = rest.find('\n', start);
      const std::string line = rest.substr(start, nl == std::string::npos ? nl : nl - start);
      if (!line.empty()) sets.push_back(line);
      if (nl == std::string::npos) break;
      start = nl + 1;
    }
  }
  try {
    std::vector<ConfigOverride> overrides;
    for (const std::string& s : sets) overrides.push_back(parse_override(s));
    const Config c = parse_config_text(yaml, "fuzz.yaml", "/fuzz", overrides);
    const Config back = parse_config_text(c.to_yaml(), "round-trip.yaml", "/fuzz");
    if (!(back == c)) fuzz::invariant_failed("to_yaml does not parse back to an equal config");
  } catch (const Error& e) {
    if (std::string(e.what()).empty()) fuzz::invariant_failed("an error without a message");
  } catch (const std::exception& e) {
    fuzz::invariant_failed("a non-ptrain exception escaped the config parser", e.what());
  }
  return 0;
}

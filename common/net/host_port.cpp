#include "common/net/host_port.hpp"

#include <fmt/format.h>

#include "common/error.hpp"

namespace ptrain::net {

HostPort parse_host_port(std::string_view text, std::string_view what, HostPortRules rules) {
  auto fail = [&](std::string_view why) -> HostPort {
    throw UsageError(fmt::format("{}: '{}' is not HOST:PORT ({})", what, text, why));
  };
  std::string_view host, port;
  if (!text.empty() && text.front() == '[') {
    const size_t close = text.find(']');
    if (close == std::string_view::npos) return fail("missing ']' after the IPv6 address");
    host = text.substr(1, close - 1);
    if (host.empty()) return fail("empty IPv6 address in brackets");
    if (close + 1 >= text.size() || text[close + 1] != ':') {
      return fail("missing ':PORT' after ']'");
    }
    port = text.substr(close + 2);
  } else {
    const size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) return fail("missing ':PORT'");
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) {
      return fail("an IPv6 address needs brackets: [ADDRESS]:PORT");
    }
    if (host.empty() && !rules.allow_empty_host) return fail("empty host");
  }
  const char* range = rules.allow_port_zero ? "0..65535" : "1..65535";
  if (port.empty()) return fail(fmt::format("empty port; expected a number {}", range));
  uint32_t p = 0;
  for (char c : port) {
    if (c < '0' || c > '9') {
      return fail(fmt::format("port '{}' is not a number {}", port, range));
    }
    p = p * 10 + static_cast<uint32_t>(c - '0');
    if (p > 65535) return fail(fmt::format("port {} is outside {}", port, range));
  }
  if (p == 0 && !rules.allow_port_zero) return fail(fmt::format("port 0 is outside {}", range));
  return HostPort{std::string(host), static_cast<uint16_t>(p)};
}

std::string format_host_port(std::string_view host, uint16_t port) {
  return host.find(':') != std::string_view::npos ? fmt::format("[{}]:{}", host, port)
                                                  : fmt::format("{}:{}", host, port);
}

}  // namespace ptrain::net

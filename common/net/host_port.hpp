// "HOST:PORT" text, parsed and printed in one place for the whole code base (command-line
// addresses, address files, the addresses servers advertise to workers). No Asio, no sockets:
// resolving the host is the caller's business.
//
// Accepted forms: "host:port", "1.2.3.4:port", "[v6 address]:port" (an IPv6 literal must be in
// brackets, since its own colons would make the port ambiguous), and, where the caller allows
// it, ":port" (no host: every interface, or "the host the peer sees").
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace ptrain::net {

struct HostPort {
  std::string host;  // without brackets; "" only when parsed with allow_empty_host
  uint16_t port = 0;
};

struct HostPortRules {
  bool allow_empty_host = false;  // accept ":PORT"
  bool allow_port_zero = true;    // port 0 = "any free port" (listening only)
};

// Parses `text`. Throws UsageError naming `what` (where the text came from: "--listen",
// "address file RUN_DIR/coordinator.addr"), the text, and what is wrong with it: a missing ':PORT',
// an unclosed '[', an IPv6 address without brackets, an empty host, a port that is not a number
// or is outside 0..65535 (1..65535 when port 0 is not allowed).
HostPort parse_host_port(std::string_view text, std::string_view what, HostPortRules rules = {});

// "host:port", or "[host]:port" when host is an IPv6 literal (contains ':').
std::string format_host_port(std::string_view host, uint16_t port);

}  // namespace ptrain::net

// The one HOST:PORT parser (common/net/host_port.hpp): the accepted forms, and a clear error
// naming the source, the text and the reason for each way to get it wrong.
#include <doctest/doctest.h>

#include "common/error.hpp"
#include "common/net/host_port.hpp"

using namespace ptrain;
using namespace ptrain::net;

TEST_CASE("host_port: names - IPv4 - bracketed IPv6 - port bounds") {
  auto ok = [](const char* text, const char* host, uint16_t port, HostPortRules r = {}) {
    CAPTURE(text);
    const HostPort hp = parse_host_port(text, "--listen", r);
    CHECK(hp.host == host);
    CHECK(hp.port == port);
  };
  ok("localhost:8080", "localhost", 8080);
  ok("10.0.0.5:0", "10.0.0.5", 0);
  ok("node-7.cluster:65535", "node-7.cluster", 65535);
  ok("[::1]:41000", "::1", 41000);
  ok("[fe80::1%eth0]:1", "fe80::1%eth0", 1);
  ok(":5000", "", 5000, {.allow_empty_host = true});
}

TEST_CASE("host_port: each malformed address is refused naming where - what - and why") {
  auto bad = [](const char* text, const char* why, HostPortRules r = {}) {
    CAPTURE(text);
    CHECK_THROWS_WITH_AS(parse_host_port(text, "--coordinator", r), doctest::Contains(why),
                         UsageError);
    try {
      parse_host_port(text, "--coordinator", r);
    } catch (const UsageError& e) {
      const std::string m = e.what();
      CHECK(m.find("--coordinator") != std::string::npos);
      CHECK(m.find(std::string("'") + text + "'") != std::string::npos);
    }
  };
  bad("localhost", "missing ':PORT'");
  bad("", "missing ':PORT'");
  bad(":80", "empty host");
  bad("host:", "empty port");
  bad("host:http", "port 'http' is not a number 0..65535");
  bad("host:-1", "is not a number");
  bad("host:65536", "port 65536 is outside 0..65535");
  bad("host:99999999999999999999", "is outside 0..65535");  // no overflow into a valid port
  bad("host:0", "port 0 is outside 1..65535", {.allow_port_zero = false});
  bad("::1:80", "an IPv6 address needs brackets");
  bad("[::1:80", "missing ']'");
  bad("[::1]80", "missing ':PORT' after ']'");
  bad("[]:80", "empty IPv6 address");
  bad("host: 80", "is not a number");
}

TEST_CASE("host_port: formatting brackets IPv6 literals only - and round-trips") {
  CHECK(format_host_port("127.0.0.1", 9) == "127.0.0.1:9");
  CHECK(format_host_port("node1", 80) == "node1:80");
  CHECK(format_host_port("::1", 443) == "[::1]:443");
  for (const char* t : {"a:1", "[::]:0", "10.1.2.3:65535"}) {
    const HostPort hp = parse_host_port(t, "x");
    CHECK(format_host_port(hp.host, hp.port) == t);
  }
}

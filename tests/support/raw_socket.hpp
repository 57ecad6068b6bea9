// Raw IPv4 client sockets for tests that must meet a server as a careless or hostile peer would:
// connect and hold the connection (a flood), then see whether and when the server closes it. No
// networking library, so nothing is read, written or closed behind the test's back.
#pragma once

#include "common/net/host_port.hpp"

#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <string>

namespace ptrain::test {

// A socket connected to HOST:PORT (an IPv4 address); the caller closes it.
inline int dial(const std::string& host_port) {
  const net::HostPort hp = net::parse_host_port(host_port, "test address");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(hp.port);
  REQUIRE(inet_pton(AF_INET, hp.host.c_str(), &a.sin_addr) == 1);
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  return fd;
}

// Sets how long a recv on `fd` may block.
inline void set_receive_timeout(int fd, std::chrono::milliseconds limit) {
  timeval tv{static_cast<time_t>(limit.count() / 1000),
             static_cast<suseconds_t>((limit.count() % 1000) * 1000)};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

// Whether the server closed `fd` within `limit` (recv returns 0 or an error other than the
// timeout). Reads at most one byte.
inline bool closed_within(int fd, std::chrono::milliseconds limit) {
  set_receive_timeout(fd, limit);
  char c;
  const ssize_t n = ::recv(fd, &c, 1, 0);
  return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
}

}  // namespace ptrain::test

// A plain HTTP GET for tests of the status endpoint: a raw IPv4 socket (no HTTP library, so the
// test sees the answer exactly as the server wrote it), 5 s receive timeout.
#pragma once

#include "common/net/host_port.hpp"

#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

namespace ptrain::test {

// GET `target` from HOST:PORT; returns the whole answer (status line, headers, body).
inline std::string http_get(const std::string& host_port, const std::string& target) {
  const net::HostPort hp = net::parse_host_port(host_port, "test address");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(hp.port);
  REQUIRE(inet_pton(AF_INET, hp.host.c_str(), &a.sin_addr) == 1);
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  const std::string req = "GET " + target + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  REQUIRE(::send(fd, req.data(), req.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(req.size()));
  std::string out;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return out;
}

}  // namespace ptrain::test

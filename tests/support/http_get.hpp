// A plain HTTP GET for tests of the status endpoint: a raw IPv4 socket (no HTTP library, so the
// test sees the answer exactly as the server wrote it), 5 s receive timeout.
#pragma once

#include "support/raw_socket.hpp"

#include <doctest/doctest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <string>

namespace ptrain::test {

// GET `target` from HOST:PORT; returns the whole answer (status line, headers, body).
inline std::string http_get(const std::string& host_port, const std::string& target) {
  const int fd = dial(host_port);
  set_receive_timeout(fd, std::chrono::seconds(5));
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

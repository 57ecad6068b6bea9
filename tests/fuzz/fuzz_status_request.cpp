// libFuzzer target: the status endpoint's request path, as the server runs it: Beast's request
// parser with the server's limits (8 KiB of headers, 8 KiB of body), then the pure router
// (route_status_request) on the parsed method and target, with a snapshot of a small job.
// Invariants:
//   1. Nothing throws out of the parse + route path (a parse error is answered 400 by the server).
//   2. The router answers a known status code with a body; 200 only for GET/HEAD of /, /metrics,
//      /status; 405 carries Allow.
#include "status/status_http.hpp"
#include "fuzz_support.hpp"

#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <string>

using namespace ptrain;
namespace beast = boost::beast;
namespace http = beast::http;

namespace {

JobStatus sample() {
  JobStatus s;
  s.step = 3;
  return s;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    http::request_parser<http::string_body> parser;
    parser.header_limit(8 * 1024);
    parser.body_limit(8 * 1024);
    parser.eager(true);
    beast::error_code ec;
    parser.put(boost::asio::buffer(data, size), ec);
    if (!ec && parser.is_header_done()) {
      const auto& req = parser.get();
      const StatusReply r = route_status_request(req.method_string(), req.target(), sample);
      const bool known = r.status == 200 || r.status == 400 || r.status == 404 ||
                         r.status == 405 || r.status == 500;
      if (!known) fuzz::invariant_failed("an unexpected status code", std::to_string(r.status));
      if (r.status == 405 && r.allow.empty()) fuzz::invariant_failed("405 without Allow");
      if (r.status == 200 && req.method() != http::verb::get && req.method() != http::verb::head) {
        fuzz::invariant_failed("200 for a method other than GET/HEAD");
      }
    }
    // The router on its own, with the input split into a method and a target.
    const std::string text(reinterpret_cast<const char*>(data), size);
    const size_t sp = text.find(' ');
    const std::string method = text.substr(0, sp);
    const std::string target = sp == std::string::npos ? "/" : text.substr(sp + 1);
    (void)route_status_request(method, target, sample);
  } catch (const std::exception& e) {
    fuzz::invariant_failed("the request path threw", e.what());
  }
  return 0;
}

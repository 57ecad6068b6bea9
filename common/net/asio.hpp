// The one header that includes Boost.Asio (1.28, from libboost1.81-dev). Everything networked in
// ptrain (TCP transport, role sessions, the status server) includes this instead of Asio itself,
// so the include order GCC 12 needs (<utility> before Asio's awaitable.hpp) lives in one place,
// and so do our naming conventions:
//   - `asio` is boost::asio, `tcp` is asio::ip::tcp;
//   - `awaitable<T>` is a coroutine returning T on the current (any_io_executor) executor;
//   - `use_awaitable` throws on error, `nothrow_awaitable` returns (error_code, results...);
//   - every wait on a peer goes through `with_deadline(op, duration, what)`:
//     timeouts are structure, built from a steady_timer raced against the operation with the
//     awaitable `||` operator (Asio 1.28 has no cancel_after).
// It is not: a transport, a session, or a place for Beast (only status/status_http.cpp
// includes Beast). Keep Asio-heavy code in few translation units: each costs ~15 s to compile.
#pragma once

#include <utility>  // first: GCC 12 + C++20 needs std::exchange before Asio's awaitable.hpp

#include <boost/asio.hpp>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>

#include "common/error.hpp"
#include "common/net/host_port.hpp"

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <exception>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>

namespace ptrain::net {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

template <class T = void>
using awaitable = asio::awaitable<T>;

using asio::use_awaitable;
// Completion token for operations whose errors are expected (a peer hanging up): the coroutine
// gets std::tuple<error_code, results...> instead of an exception.
inline constexpr auto nothrow_awaitable = asio::as_tuple(asio::use_awaitable);

using Clock = std::chrono::steady_clock;

// An operation on a peer did not finish within its deadline. `what` names the operation and the
// peer ("reading the auth hello from 10.0.0.5:41234").
class TimeoutError : public Error {
 public:
  explicit TimeoutError(const std::string& what) : Error(ExitCode::kIo, what) {}
};

// Runs `op` with a deadline: returns its result, or cancels it and throws TimeoutError naming
// `what` and the limit once `limit` has passed. The operation sees the cancellation through its
// cancellation slot (socket reads/writes, timers, resolves all honour it), so nothing is left
// running on the socket afterwards. Exceptions from `op` propagate unchanged.
//   auto n = co_await with_deadline(asio::async_read(sock, buf, use_awaitable), 10s, "auth hello");
// Why `op` is wrapped: Asio's awaitable `||` waits for the first operation that *succeeds*, so an
// operation that failed at once (a refused handshake) would sit until the timer fired and then be
// reported as a timeout, hiding the true reason for the whole deadline. The wrapper turns the
// failure into a value, so `||` ends at once, and it is rethrown here unchanged.
template <class T>
awaitable<T> with_deadline(awaitable<T> op, Clock::duration limit, std::string_view what) {
  using namespace asio::experimental::awaitable_operators;
  using Value = std::conditional_t<std::is_void_v<T>, std::monostate, T>;
  // A struct, not a std::variant: `||` flattens variant results into its own.
  struct Outcome {
    std::optional<Value> value;
    std::exception_ptr error;
  };
  auto caught = [](awaitable<T> inner) -> awaitable<Outcome> {
    Outcome out;
    try {
      if constexpr (std::is_void_v<T>) {
        co_await std::move(inner);
        out.value.emplace();
      } else {
        out.value.emplace(co_await std::move(inner));
      }
    } catch (...) {
      out.error = std::current_exception();
    }
    co_return out;
  };
  asio::steady_timer timer(co_await asio::this_coro::executor);
  timer.expires_after(limit);
  auto result = co_await (caught(std::move(op)) || timer.async_wait(use_awaitable));
  if (result.index() == 1) {
    throw TimeoutError(fmt::format(
        "{} timed out after {} ms", what,
        std::chrono::duration_cast<std::chrono::milliseconds>(limit).count()));
  }
  Outcome& outcome = std::get<0>(result);
  if (outcome.error) std::rethrow_exception(outcome.error);
  if constexpr (!std::is_void_v<T>) {
    co_return std::move(*outcome.value);
  }
}

// "HOST:PORT" for an endpoint, with IPv6 addresses in brackets ("[::1]:8080").
inline std::string format_endpoint(const tcp::endpoint& ep) {
  return format_host_port(ep.address().to_string(), ep.port());
}

// The host others should use to reach a socket bound to `addr`: the address itself, except for
// the unspecified address (0.0.0.0 or ::, "every interface"), which is nobody's destination —
// then this machine's host name (so a peer on another host sharing the run directory can
// connect), or 127.0.0.1 when the host name is not available. Address files
// (RUN_DIR/coordinator.addr, RUN_DIR/status.addr) are written with this, never with 0.0.0.0.
inline std::string advertised_host(const asio::ip::address& addr) {
  if (!addr.is_unspecified()) return addr.to_string();
  char name[256] = {};
  if (::gethostname(name, sizeof(name) - 1) == 0 && name[0] != '\0') return name;
  return "127.0.0.1";
}

// advertised_host + port as "HOST:PORT" (brackets around an IPv6 literal).
inline std::string advertised_endpoint(const tcp::endpoint& ep) {
  return format_host_port(advertised_host(ep.address()), ep.port());
}

}  // namespace ptrain::net

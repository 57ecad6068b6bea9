// libFuzzer target: the authentication handshake, both sides (net::ServerHandshake and
// net::ClientHandshake, the state machines the TCP node drives), fed the auth frames found in the
// input as a hostile peer would send them. Invariants:
//   1. Neither side throws, whatever arrives, in whatever order.
//   2. The server accepts only after a Proof that verifies against the secret for its Hello's role
//      and both nonces; the client accepts only after a Challenge whose proof verifies and an
//      accepting Result.
//   3. Once refused or accepted, a side's verdict is final in the sense that a refusal always
//      carries a reason.
// So that the accepting paths are reached, an input whose first byte is odd has every Proof (for
// the server) and Challenge proof (for the client) replaced by the correct one before it is fed.
#include "common/net/auth.hpp"
#include "fuzz_support.hpp"

#include <cstdint>
#include <cstring>
#include <span>

using namespace ptrain;
using namespace ptrain::net;

namespace {

const Secret& secret() {
  static const Secret s("fuzz-secret-0123456789abcdef");
  return s;
}

Nonce nonce_of(uint8_t b) {
  Nonce n{};
  n.fill(b);
  return n;
}

// The auth frames in `bytes`, in order, up to the first undecodable one.
template <class F>
void each_frame(std::span<const std::byte> bytes, F&& f) {
  while (!bytes.empty()) {
    const AuthDecodeResult r = decode_auth(bytes);
    if (r.status != proto::DecodeStatus::kGood) return;
    if (!f(r.frame)) return;
    bytes = bytes.subspan(r.frame_size);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const bool fix_proofs = (data[0] & 1) != 0;
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data + 1), size - 1);
  try {
    // ---- the server, facing a hostile client ----
    {
      const Nonce ns = nonce_of(7);
      ServerHandshake s(secret(), Role::kCoordinator, ns);
      std::optional<AuthHello> hello;
      AuthState state = AuthState::kContinue;
      each_frame(bytes, [&](AuthFrame f) {
        if (auto* h = std::get_if<AuthHello>(&f); h && !hello) hello = *h;
        if (auto* p = std::get_if<AuthProof>(&f); p && fix_proofs && hello) {
          p->proof = compute_proof(secret(), AuthSide::kClient, hello->role, ns, hello->nonce);
        }
        const bool proof_ok = [&] {
          const auto* p = std::get_if<AuthProof>(&f);
          return p && hello &&
                 verify_proof(secret(), AuthSide::kClient, hello->role, ns, hello->nonce,
                              p->proof);
        }();
        const AuthStep step = s.on_frame(f);
        if (step.state == AuthState::kAccepted && !proof_ok) {
          fuzz::invariant_failed("the server accepted without a valid proof");
        }
        if (step.state == AuthState::kRefused && step.reason.empty()) {
          fuzz::invariant_failed("the server refused without a reason");
        }
        state = step.state;
        return state == AuthState::kContinue;
      });
      (void)state;
    }
    // ---- the client, facing a hostile server ----
    {
      const Nonce nc = nonce_of(9);
      ClientHandshake c(secret(), Role::kWorker, nc);
      (void)c.hello();
      bool challenge_ok = false;
      each_frame(bytes, [&](AuthFrame f) {
        if (auto* ch = std::get_if<AuthChallenge>(&f)) {
          if (fix_proofs) {
            ch->proof = compute_proof(secret(), AuthSide::kServer, ch->role, nc, ch->nonce);
          }
          challenge_ok = !challenge_ok &&
                         verify_proof(secret(), AuthSide::kServer, ch->role, nc, ch->nonce,
                                      ch->proof);
        }
        const AuthStep step = c.on_frame(f);
        if (step.state == AuthState::kAccepted && !challenge_ok) {
          fuzz::invariant_failed("the client accepted without a valid challenge");
        }
        if (step.state == AuthState::kRefused && step.reason.empty()) {
          fuzz::invariant_failed("the client refused without a reason");
        }
        return step.state == AuthState::kContinue;
      });
    }
  } catch (const std::exception& e) {
    fuzz::invariant_failed("a handshake threw", e.what());
  }
  return 0;
}

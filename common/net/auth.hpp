// Peer authentication: the per-job secret and the HMAC-SHA256 challenge–response every TCP
// connection runs before its first protocol frame. Everything here is pure (bytes in, bytes out)
// except the secret-file functions and random_nonce(); the sessions that move these bytes over a
// socket live with the TCP transport. Not here: registration, roles' ids, TLS (the control plane
// is authenticated, not encrypted — see docs).
//
// ---- The secret -------------------------------------------------------------------------------
// A job's secret is the content of a file (RUN_DIR/secret, written by `ptrain run`, or a file the
// user names with --secret-file), one line; its bytes as they are (usually 64 hex digits) are the
// HMAC key. The file must be mode 0600 (no group/other bits): a readable secret is refused.
// `Secret` holds the bytes, wipes them on destruction and has no formatter, operator<< or string
// conversion, so it cannot end up in a log, a config dump or a checkpoint by accident.
//
// ---- The handshake (auth version 1) -----------------------------------------------------------
// The connecting side (client) and the accepting side (server) exchange four small frames:
//   client → server  Hello      {protocol version, client role, client nonce Nc}
//   server → client  Challenge  {server role, server nonce Ns, server proof Ps}
//                 or Result     {refused, reason}          (e.g. protocol versions differ)
//   client → server  Proof      {client proof Pc}          (only after Ps checked out)
//                 or Result     {refused, reason}          (Ps did not check out: wrong secret)
//   server → client  Result     {accepted | refused, reason}
// with, for a prover on side D (1 = client, 2 = server) in role R:
//   proof = HMAC-SHA256(secret, "ptrain-auth-v1" || u8 D || u8 R || peer's nonce || own nonce)
//   Pc = proof(D=1, client role, Ns, Nc)      Ps = proof(D=2, server role, Nc, Ns)
// Both sides prove knowledge of the secret (mutual); nonces are 32 fresh random bytes per
// connection, so a recorded exchange cannot be replayed, and the side byte and the nonce order
// differ between Pc and Ps, so a proof cannot be reflected back. Proofs are compared in constant
// time (CRYPTO_memcmp). After an accepted Result both sides speak protocol frames
// (common/proto/codec.hpp); the server refuses a protocol frame before that.
//
// Auth frame layout (little-endian), never more than kMaxAuthFrame = 256 bytes, so a reader
// allocates nothing beyond a fixed buffer before the peer is authenticated:
//   offset 0  u32  magic        kAuthMagic ("PTRA"; protocol frames start with "PTRN")
//   offset 4  u8   auth version kAuthVersion (1)
//   offset 5  u8   kind         1 Hello, 2 Challenge, 3 Proof, 4 Result
//   offset 6  u16  body length  exact for each kind (Result: 3 + reason length)
//   body:
//     Hello      35 bytes  u16 protocol version, u8 role, 32-byte nonce
//     Challenge  65 bytes  u8 role, 32-byte nonce, 32-byte proof
//     Proof      32 bytes  32-byte proof
//     Result     3+n       u8 accepted (0|1), u16 n (≤ kMaxReason = 200), n bytes of reason text
// Roles are net::Role values (0 coordinator, 1 server, 2 worker).
#pragma once

#include "common/error.hpp"
#include "common/net/transport.hpp"

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace ptrain::net {

// ---- the secret ------------------------------------------------------------------------------

// The job's shared secret. Deliberately unprintable: no operator<<, no fmt::formatter, no
// conversion to std::string. Copies are cheap (a few dozen bytes); every copy is wiped on
// destruction.
class Secret {
 public:
  // Takes the key bytes (e.g. the content of a secret file or an environment variable's value,
  // read by the command line). Throws IoError when `bytes` is empty.
  explicit Secret(std::string bytes);
  Secret(const Secret&) = default;
  Secret& operator=(const Secret&) = default;
  Secret(Secret&&) noexcept = default;
  Secret& operator=(Secret&&) noexcept = default;
  ~Secret();

  // The key bytes, for HMAC and for writing the secret file. Do not log them.
  std::span<const unsigned char> key() const {
    return {reinterpret_cast<const unsigned char*>(bytes_.data()), bytes_.size()};
  }
  size_t size() const { return bytes_.size(); }

 private:
  std::string bytes_;
};

// A fresh secret: 32 bytes from /dev/urandom as 64 lowercase hex digits. Throws IoError when the
// random source cannot be read.
Secret generate_secret();

enum class OverwriteSecret { kNo, kYes };

// Generates a secret and writes it (plus a newline) to `path` with mode 0600, atomically (a temp
// file created 0600 in the same folder, fsynced, then linked or renamed into place; the folder is
// fsynced). With OverwriteSecret::kNo an existing `path` is refused with IoError and left as it
// is (so two launchers cannot silently replace each other's secret). Returns the secret written.
Secret write_secret_file(const std::string& path, OverwriteSecret overwrite = OverwriteSecret::kNo);

// Reads a secret file: IoError naming `path` when it is missing, not a regular file, readable or
// writable by group or others ("chmod 600 PATH"), larger than 4 KiB, or empty once the trailing
// newline (\n or \r\n) is stripped.
Secret read_secret_file(const std::string& path);

// ---- pure crypto -----------------------------------------------------------------------------

inline constexpr size_t kNonceSize = 32;
inline constexpr size_t kProofSize = 32;  // HMAC-SHA256
using Nonce = std::array<unsigned char, kNonceSize>;
using Proof = std::array<unsigned char, kProofSize>;

// HMAC-SHA256 of `data` under `key` (exposed for the RFC 4231 test).
std::array<unsigned char, 32> hmac_sha256(std::span<const unsigned char> key,
                                          std::span<const unsigned char> data);

// 32 bytes from the OS's CSPRNG (OpenSSL RAND_bytes). Throws IoError if it fails.
Nonce random_nonce();

enum class AuthSide : uint8_t { kClient = 1, kServer = 2 };

// proof = HMAC(secret, "ptrain-auth-v1" || side || role || peer_nonce || own_nonce).
Proof compute_proof(const Secret& secret, AuthSide side, Role role, const Nonce& peer_nonce,
                    const Nonce& own_nonce);

// Recomputes the proof a prover on `side` in `role` should have sent and compares it in constant
// time with `got`.
bool verify_proof(const Secret& secret, AuthSide side, Role role, const Nonce& peer_nonce,
                  const Nonce& own_nonce, const Proof& got);

// ---- auth frames -----------------------------------------------------------------------------

inline constexpr uint32_t kAuthMagic = 0x41525450u;  // "PTRA" as little-endian bytes
inline constexpr uint8_t kAuthVersion = 1;
inline constexpr size_t kAuthHeaderSize = 8;
inline constexpr size_t kMaxAuthFrame = 256;
inline constexpr size_t kMaxReason = 200;

struct AuthHello {
  uint16_t protocol_version = proto::kProtocolVersion;
  Role role = Role::kWorker;
  Nonce nonce{};
  bool operator==(const AuthHello&) const = default;
};
struct AuthChallenge {
  Role role = Role::kCoordinator;
  Nonce nonce{};
  Proof proof{};
  bool operator==(const AuthChallenge&) const = default;
};
struct AuthProof {
  Proof proof{};
  bool operator==(const AuthProof&) const = default;
};
struct AuthResult {
  bool accepted = false;
  std::string reason;  // ≤ kMaxReason bytes on the wire (longer text is cut)
  bool operator==(const AuthResult&) const = default;
};
using AuthFrame = std::variant<AuthHello, AuthChallenge, AuthProof, AuthResult>;

std::vector<std::byte> encode_auth(const AuthFrame& frame);

struct AuthDecodeResult {
  proto::DecodeStatus status = proto::DecodeStatus::kNeedMore;
  // kGood: bytes of the frame; kNeedMore with a readable header: the whole frame's size (a
  // reader then reads exactly the rest, never more than kMaxAuthFrame); else 0.
  size_t frame_size = 0;
  AuthFrame frame;
  std::string error;  // kBad: why (names what the peer sent when it is recognisable)
};

// Looks for one auth frame at the start of `bytes`: kNeedMore (under kAuthHeaderSize bytes, or the
// body not complete), kBad with a reason (wrong magic — from the first byte that cannot start it;
// with 4 bytes named as a protocol frame, an HTTP request or noise —, another auth version, unknown kind, a body length that does not fit the kind, a bad
// role or flag), or kGood.
AuthDecodeResult decode_auth(std::span<const std::byte> bytes);

// ---- the handshake as two pure state machines --------------------------------------------------
// A session feeds each decoded frame from the peer to on_frame() and sends `send` (when not
// empty); `state` says whether to go on. A refusal carries a reason for the log; a server's
// refusal also carries the Result frame to send before closing. Neither throws for anything the
// peer does.

enum class AuthState { kContinue, kAccepted, kRefused };

struct AuthStep {
  AuthState state = AuthState::kContinue;
  std::vector<std::byte> send;  // bytes to write to the peer now (may be empty)
  std::string reason;           // kRefused: why, for the log
};

class ClientHandshake {
 public:
  ClientHandshake(Secret secret, Role self, Nonce nonce = random_nonce());
  // The Hello frame, the first bytes the client writes.
  std::vector<std::byte> hello() const;
  // Challenge → verifies the server's proof, answers with the Proof frame (kContinue) or refuses
  // (the server does not know the secret; `send` then holds a refusing Result for the server,
  // so that both sides say "the job secret does not match" at once). Result → kAccepted or kRefused with the server's
  // reason. Anything out of order → kRefused.
  AuthStep on_frame(const AuthFrame& frame);
  Role server_role() const { return server_role_; }

 private:
  Secret secret_;
  Role self_;
  Nonce nonce_;
  Role server_role_ = Role::kCoordinator;
  bool challenged_ = false;
};

class ServerHandshake {
 public:
  ServerHandshake(Secret secret, Role self, Nonce nonce = random_nonce());
  // Hello → Challenge (kContinue), or a refusing Result when the protocol versions differ.
  // Proof → Result accepted (kAccepted) or refused (kRefused: wrong secret). Anything out of order
  // → kRefused with a Result frame to send. A refusing Result from the client (it found our proof
  // wrong) → kRefused with the client's reason and nothing to send.
  AuthStep on_frame(const AuthFrame& frame);
  Role client_role() const { return client_role_; }

 private:
  AuthStep refuse(std::string reason);
  Secret secret_;
  Role self_;
  Nonce nonce_;
  Nonce client_nonce_{};
  Role client_role_ = Role::kWorker;
  bool greeted_ = false;
};

}  // namespace ptrain::net

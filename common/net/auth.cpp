#include "common/net/auth.hpp"

#include "common/util/fs.hpp"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

namespace ptrain::net {
namespace {

constexpr std::string_view kProofLabel = "ptrain-auth-v1";
// The words every wrong-secret refusal starts with, on both sides, so a user (and a test) finds
// the true reason whichever side's log they read.
constexpr std::string_view kSecretMismatch = "the job secret does not match";
constexpr size_t kMaxSecretFile = 4096;

enum class Kind : uint8_t { kHello = 1, kChallenge = 2, kProof = 3, kResult = 4 };
constexpr size_t kHelloBody = 2 + 1 + kNonceSize;
constexpr size_t kChallengeBody = 1 + kNonceSize + kProofSize;
constexpr size_t kProofBody = kProofSize;
static_assert(kAuthHeaderSize + 3 + kMaxReason <= kMaxAuthFrame);
static_assert(kAuthHeaderSize + kChallengeBody <= kMaxAuthFrame);

const char* role_name(Role r) {
  switch (r) {
    case Role::kCoordinator: return "coordinator";
    case Role::kServer: return "server";
    case Role::kWorker: return "worker";
  }
  return "unknown";
}

std::string errno_text(int err) { return std::strerror(err); }

// Closes a file descriptor on scope exit.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

void write_all(int fd, std::string_view bytes, const std::string& path) {
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw IoError(fmt::format("cannot write the secret file {}: {}", path, errno_text(errno)));
    }
    done += static_cast<size_t>(n);
  }
}

// Byte writer/reader for auth frames (fixed little-endian widths; host is little-endian, as the
// codec already asserts).
struct Out {
  std::vector<std::byte> bytes;
  void raw(const void* p, size_t n) {
    const auto* b = static_cast<const std::byte*>(p);
    bytes.insert(bytes.end(), b, b + n);
  }
  void u8(uint8_t x) { raw(&x, 1); }
  void u16(uint16_t x) { raw(&x, 2); }
  void u32(uint32_t x) { raw(&x, 4); }
};

}  // namespace

// ---- the secret ------------------------------------------------------------------------------

Secret::Secret(std::string bytes) : bytes_(std::move(bytes)) {
  if (bytes_.empty()) throw IoError("the job secret is empty");
}

Secret::~Secret() {
  if (!bytes_.empty()) OPENSSL_cleanse(bytes_.data(), bytes_.size());
}

Secret generate_secret() {
  unsigned char raw[32];
  {
    Fd f{::open("/dev/urandom", O_RDONLY | O_CLOEXEC)};
    if (f.fd < 0) throw IoError(fmt::format("cannot open /dev/urandom: {}", errno_text(errno)));
    size_t got = 0;
    while (got < sizeof(raw)) {
      ssize_t n = ::read(f.fd, raw + got, sizeof(raw) - got);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        throw IoError(fmt::format("cannot read /dev/urandom: {}",
                                  n == 0 ? std::string("end of file") : errno_text(errno)));
      }
      got += static_cast<size_t>(n);
    }
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex(2 * sizeof(raw), '0');
  for (size_t i = 0; i < sizeof(raw); ++i) {
    hex[2 * i] = kHex[raw[i] >> 4];
    hex[2 * i + 1] = kHex[raw[i] & 15];
  }
  OPENSSL_cleanse(raw, sizeof(raw));
  Secret s(std::move(hex));  // moved-from `hex` holds nothing (or is wiped below)
  OPENSSL_cleanse(hex.data(), hex.size());
  return s;
}

Secret write_secret_file(const std::string& path, OverwriteSecret overwrite) {
  Secret secret = generate_secret();
  const std::string tmp = fmt::format("{}.tmp.{}", path, ::getpid());
  {
    Fd f{::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)};
    if (f.fd < 0) {
      throw IoError(fmt::format("cannot create the secret file {}: {}", tmp, errno_text(errno)));
    }
    try {
      // The umask can only remove bits from 0600; fchmod makes sure no others were there.
      if (::fchmod(f.fd, 0600) != 0) {
        throw IoError(fmt::format("cannot chmod 600 {}: {}", tmp, errno_text(errno)));
      }
      const auto key = secret.key();
      std::string line(reinterpret_cast<const char*>(key.data()), key.size());
      line.push_back('\n');
      write_all(f.fd, line, path);
      OPENSSL_cleanse(line.data(), line.size());
      if (::fsync(f.fd) != 0) {
        throw IoError(fmt::format("cannot fsync the secret file {}: {}", tmp, errno_text(errno)));
      }
    } catch (...) {
      ::unlink(tmp.c_str());
      throw;
    }
  }
  if (overwrite == OverwriteSecret::kYes) {
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      const int err = errno;
      ::unlink(tmp.c_str());
      throw IoError(fmt::format("cannot rename {} to {}: {}", tmp, path, errno_text(err)));
    }
  } else {
    // link() fails with EEXIST when `path` exists, atomically: no window where a concurrent
    // writer's secret could be replaced.
    if (::link(tmp.c_str(), path.c_str()) != 0) {
      const int err = errno;
      ::unlink(tmp.c_str());
      if (err == EEXIST) {
        throw IoError(fmt::format(
            "the secret file {} already exists; not overwriting it (another job's secret?)",
            path));
      }
      throw IoError(fmt::format("cannot create the secret file {}: {}", path, errno_text(err)));
    }
    ::unlink(tmp.c_str());
  }
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  fsync_path(parent.empty() ? "." : parent.string());
  return secret;
}

Secret read_secret_file(const std::string& path) {
  Fd f{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (f.fd < 0) {
    throw IoError(fmt::format("cannot read the secret file {}: {}", path, errno_text(errno)));
  }
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) {
    throw IoError(fmt::format("cannot stat the secret file {}: {}", path, errno_text(errno)));
  }
  if (!S_ISREG(st.st_mode)) {
    throw IoError(fmt::format("the secret file {} is not a regular file", path));
  }
  if ((st.st_mode & 077) != 0) {
    throw IoError(fmt::format(
        "the secret file {} is accessible by group or others (mode {:04o}); refusing to use it: "
        "run `chmod 600 {}`",
        path, st.st_mode & 07777, path));
  }
  if (st.st_size > static_cast<off_t>(kMaxSecretFile)) {
    throw IoError(fmt::format("the secret file {} holds {} bytes; a secret is one line of at "
                              "most {} bytes",
                              path, st.st_size, kMaxSecretFile));
  }
  std::string bytes(kMaxSecretFile + 1, '\0');
  size_t got = 0;
  for (;;) {
    ssize_t n = ::read(f.fd, bytes.data() + got, bytes.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      OPENSSL_cleanse(bytes.data(), bytes.size());
      throw IoError(fmt::format("cannot read the secret file {}: {}", path, errno_text(err)));
    }
    if (n == 0 || got + static_cast<size_t>(n) == bytes.size()) {
      got += static_cast<size_t>(n);
      break;
    }
    got += static_cast<size_t>(n);
  }
  if (got > kMaxSecretFile) {
    OPENSSL_cleanse(bytes.data(), bytes.size());
    throw IoError(fmt::format("the secret file {} is larger than {} bytes", path, kMaxSecretFile));
  }
  if (got > 0 && bytes[got - 1] == '\n') --got;
  if (got > 0 && bytes[got - 1] == '\r') --got;
  if (got == 0) {
    throw IoError(fmt::format("the secret file {} is empty", path));
  }
  Secret s(std::string(bytes.data(), got));
  OPENSSL_cleanse(bytes.data(), bytes.size());
  return s;
}

// ---- pure crypto -----------------------------------------------------------------------------

std::array<unsigned char, 32> hmac_sha256(std::span<const unsigned char> key,
                                          std::span<const unsigned char> data) {
  std::array<unsigned char, 32> out{};
  unsigned int len = 0;
  PTRAIN_ENFORCE(key.size() <= static_cast<size_t>(INT32_MAX), "HMAC key of {} bytes", key.size());
  const unsigned char* r = HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
                                data.data(), data.size(), out.data(), &len);
  PTRAIN_ENFORCE(r != nullptr && len == out.size(), "HMAC-SHA256 failed in libcrypto");
  return out;
}

Nonce random_nonce() {
  Nonce n{};
  if (RAND_bytes(n.data(), static_cast<int>(n.size())) != 1) {
    throw IoError("cannot draw an authentication nonce: OpenSSL RAND_bytes failed");
  }
  return n;
}

Proof compute_proof(const Secret& secret, AuthSide side, Role role, const Nonce& peer_nonce,
                    const Nonce& own_nonce) {
  std::array<unsigned char, kProofLabel.size() + 2 + 2 * kNonceSize> msg{};
  size_t at = 0;
  std::memcpy(msg.data(), kProofLabel.data(), kProofLabel.size());
  at += kProofLabel.size();
  msg[at++] = static_cast<unsigned char>(side);
  msg[at++] = static_cast<unsigned char>(role);
  std::memcpy(msg.data() + at, peer_nonce.data(), kNonceSize);
  at += kNonceSize;
  std::memcpy(msg.data() + at, own_nonce.data(), kNonceSize);
  return hmac_sha256(secret.key(), msg);
}

bool verify_proof(const Secret& secret, AuthSide side, Role role, const Nonce& peer_nonce,
                  const Nonce& own_nonce, const Proof& got) {
  const Proof want = compute_proof(secret, side, role, peer_nonce, own_nonce);
  return CRYPTO_memcmp(want.data(), got.data(), kProofSize) == 0;
}

// ---- auth frames -----------------------------------------------------------------------------

std::vector<std::byte> encode_auth(const AuthFrame& frame) {
  Out body;
  Kind kind = Kind::kHello;
  std::visit(
      [&](const auto& f) {
        using T = std::decay_t<decltype(f)>;
        if constexpr (std::is_same_v<T, AuthHello>) {
          kind = Kind::kHello;
          body.u16(f.protocol_version);
          body.u8(static_cast<uint8_t>(f.role));
          body.raw(f.nonce.data(), kNonceSize);
        } else if constexpr (std::is_same_v<T, AuthChallenge>) {
          kind = Kind::kChallenge;
          body.u8(static_cast<uint8_t>(f.role));
          body.raw(f.nonce.data(), kNonceSize);
          body.raw(f.proof.data(), kProofSize);
        } else if constexpr (std::is_same_v<T, AuthProof>) {
          kind = Kind::kProof;
          body.raw(f.proof.data(), kProofSize);
        } else {
          kind = Kind::kResult;
          const size_t n = std::min(f.reason.size(), kMaxReason);
          body.u8(f.accepted ? 1 : 0);
          body.u16(static_cast<uint16_t>(n));
          body.raw(f.reason.data(), n);
        }
      },
      frame);
  Out out;
  out.bytes.reserve(kAuthHeaderSize + body.bytes.size());
  out.u32(kAuthMagic);
  out.u8(kAuthVersion);
  out.u8(static_cast<uint8_t>(kind));
  out.u16(static_cast<uint16_t>(body.bytes.size()));
  out.raw(body.bytes.data(), body.bytes.size());
  return std::move(out.bytes);
}

AuthDecodeResult decode_auth(std::span<const std::byte> bytes) {
  AuthDecodeResult r;
  auto bad = [&r](std::string why) {
    r.status = proto::DecodeStatus::kBad;
    r.error = std::move(why);
    r.frame_size = 0;
    return r;
  };
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  // Refuse garbage as early as possible: from the first byte that cannot begin the magic (a
  // reader then drops a peer that sent one stray byte at once, not at its deadline), with a
  // better reason once 4 bytes tell what the peer speaks.
  if (bytes.size() < 4) {
    const uint32_t magic = kAuthMagic;
    if (std::memcmp(p, &magic, bytes.size()) != 0) {
      std::string hex;
      for (size_t i = 0; i < bytes.size(); ++i) hex += fmt::format("{:02x}", p[i]);
      return bad(fmt::format("not a ptrain auth frame (it starts with 0x{}, expected \"PTRA\")",
                             hex));
    }
    return r;
  }
  {
    uint32_t magic;
    std::memcpy(&magic, p, 4);
    if (magic != kAuthMagic) {
      if (magic == proto::kMagic) {
        return bad("the peer sent a protocol frame before authenticating");
      }
      if (std::memcmp(p, "GET ", 4) == 0 || std::memcmp(p, "POST", 4) == 0 ||
          std::memcmp(p, "HEAD", 4) == 0) {
        return bad("the peer sent an HTTP request to the control port (the status page is on "
                   "status.port)");
      }
      return bad(fmt::format("not a ptrain auth frame (magic 0x{:08x}, expected 0x{:08x} "
                             "\"PTRA\")",
                             magic, kAuthMagic));
    }
  }
  if (bytes.size() < kAuthHeaderSize) return r;
  if (p[4] != kAuthVersion) {
    return bad(fmt::format("auth version {} is not supported: this build speaks auth version {}",
                           p[4], kAuthVersion));
  }
  const uint8_t kind = p[5];
  uint16_t len;
  std::memcpy(&len, p + 6, 2);
  size_t want = 0;
  switch (static_cast<Kind>(kind)) {
    case Kind::kHello: want = kHelloBody; break;
    case Kind::kChallenge: want = kChallengeBody; break;
    case Kind::kProof: want = kProofBody; break;
    case Kind::kResult: want = 0; break;
    default: return bad(fmt::format("unknown auth frame kind {}", kind));
  }
  if (static_cast<Kind>(kind) == Kind::kResult) {
    if (len < 3 || len > 3 + kMaxReason) {
      return bad(fmt::format("auth Result with a {}-byte body (3..{} allowed)", len,
                             3 + kMaxReason));
    }
  } else if (len != want) {
    return bad(fmt::format("auth frame kind {} with a {}-byte body ({} expected)", kind, len, want));
  }
  r.frame_size = kAuthHeaderSize + len;
  if (bytes.size() < r.frame_size) return r;  // need more; the size is known and small
  const unsigned char* b = p + kAuthHeaderSize;
  auto role_at = [&](size_t off, Role& out) {
    if (b[off] > static_cast<uint8_t>(Role::kWorker)) return false;
    out = static_cast<Role>(b[off]);
    return true;
  };
  switch (static_cast<Kind>(kind)) {
    case Kind::kHello: {
      AuthHello h;
      std::memcpy(&h.protocol_version, b, 2);
      if (!role_at(2, h.role)) return bad(fmt::format("auth Hello names role {}", b[2]));
      std::memcpy(h.nonce.data(), b + 3, kNonceSize);
      r.frame = h;
      break;
    }
    case Kind::kChallenge: {
      AuthChallenge c;
      if (!role_at(0, c.role)) return bad(fmt::format("auth Challenge names role {}", b[0]));
      std::memcpy(c.nonce.data(), b + 1, kNonceSize);
      std::memcpy(c.proof.data(), b + 1 + kNonceSize, kProofSize);
      r.frame = c;
      break;
    }
    case Kind::kProof: {
      AuthProof pr;
      std::memcpy(pr.proof.data(), b, kProofSize);
      r.frame = pr;
      break;
    }
    case Kind::kResult: {
      AuthResult res;
      if (b[0] > 1) return bad(fmt::format("auth Result with accepted = {}", b[0]));
      res.accepted = b[0] == 1;
      uint16_t n;
      std::memcpy(&n, b + 1, 2);
      if (static_cast<size_t>(n) + 3 != len) {
        return bad(fmt::format("auth Result announces a {}-byte reason in a {}-byte body", n, len));
      }
      // Only printable ASCII is kept: the reason goes to a log.
      res.reason.reserve(n);
      for (size_t i = 0; i < n; ++i) {
        const unsigned char c = b[3 + i];
        res.reason.push_back(c >= 0x20 && c < 0x7f ? static_cast<char>(c) : '?');
      }
      r.frame = std::move(res);
      break;
    }
  }
  r.status = proto::DecodeStatus::kGood;
  return r;
}

// ---- handshakes ------------------------------------------------------------------------------

ClientHandshake::ClientHandshake(Secret secret, Role self, Nonce nonce)
    : secret_(std::move(secret)), self_(self), nonce_(nonce) {}

std::vector<std::byte> ClientHandshake::hello() const {
  return encode_auth(AuthHello{proto::kProtocolVersion, self_, nonce_});
}

AuthStep ClientHandshake::on_frame(const AuthFrame& frame) {
  AuthStep step;
  if (const auto* c = std::get_if<AuthChallenge>(&frame)) {
    if (challenged_) {
      step.state = AuthState::kRefused;
      step.reason = "the server sent a second auth Challenge";
      return step;
    }
    challenged_ = true;
    server_role_ = c->role;
    if (!verify_proof(secret_, AuthSide::kServer, c->role, nonce_, c->nonce, c->proof)) {
      step.state = AuthState::kRefused;
      step.reason = fmt::format(
          "{}: the {} does not know this job's secret (its proof does not match): wrong "
          "--secret-file, or not the job you meant to join",
          kSecretMismatch, role_name(c->role));
      // Tell the server at once, so it reports the true reason rather than waiting for a Proof
      // until its handshake deadline.
      step.send = encode_auth(AuthResult{
          false, fmt::format("{}: the {} refused this {}'s proof (the two hold different "
                             "secrets: wrong --secret-file, or another job's address?)",
                             kSecretMismatch, role_name(self_), role_name(c->role))});
      return step;
    }
    step.send = encode_auth(
        AuthProof{compute_proof(secret_, AuthSide::kClient, self_, c->nonce, nonce_)});
    return step;
  }
  if (const auto* res = std::get_if<AuthResult>(&frame)) {
    if (res->accepted && challenged_) {
      step.state = AuthState::kAccepted;
      return step;
    }
    step.state = AuthState::kRefused;
    step.reason = res->accepted ? "the server accepted before challenging (protocol violation)"
                                : fmt::format("refused by the peer: {}", res->reason);
    return step;
  }
  step.state = AuthState::kRefused;
  step.reason = "unexpected auth frame from the server";
  return step;
}

ServerHandshake::ServerHandshake(Secret secret, Role self, Nonce nonce)
    : secret_(std::move(secret)), self_(self), nonce_(nonce) {}

AuthStep ServerHandshake::refuse(std::string reason) {
  AuthStep step;
  step.state = AuthState::kRefused;
  step.send = encode_auth(AuthResult{false, reason});
  step.reason = std::move(reason);
  return step;
}

AuthStep ServerHandshake::on_frame(const AuthFrame& frame) {
  if (const auto* h = std::get_if<AuthHello>(&frame)) {
    if (greeted_) return refuse("a second auth Hello");
    greeted_ = true;
    client_role_ = h->role;
    client_nonce_ = h->nonce;
    if (h->protocol_version != proto::kProtocolVersion) {
      return refuse(fmt::format(
          "protocol version {} is not supported: this {} speaks protocol version {}",
          h->protocol_version, role_name(self_), proto::kProtocolVersion));
    }
    AuthStep step;
    step.send = encode_auth(AuthChallenge{
        self_, nonce_, compute_proof(secret_, AuthSide::kServer, self_, client_nonce_, nonce_)});
    return step;
  }
  if (const auto* p = std::get_if<AuthProof>(&frame)) {
    if (!greeted_) return refuse("an auth Proof before the Hello");
    if (!verify_proof(secret_, AuthSide::kClient, client_role_, nonce_, client_nonce_,
                      p->proof)) {
      return refuse(fmt::format("{}: the {}'s proof does not match this job's secret (wrong or "
                                "missing --secret-file?)",
                                kSecretMismatch, role_name(client_role_)));
    }
    AuthStep step;
    step.state = AuthState::kAccepted;
    step.send = encode_auth(AuthResult{true, ""});
    return step;
  }
  if (const auto* r = std::get_if<AuthResult>(&frame)) {
    // The client gave up on us (it found our proof wrong): its reason is the true one. Nothing is
    // sent back: the client has already closed.
    AuthStep step;
    step.state = AuthState::kRefused;
    step.reason = r->accepted ? std::string("the client sent an accepting auth Result "
                                            "(protocol violation)")
                              : fmt::format("refused by the {}: {}", role_name(client_role_),
                                            r->reason);
    return step;
  }
  return refuse("unexpected auth frame from the client");
}

}  // namespace ptrain::net

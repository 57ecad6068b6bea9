// Peer authentication (common/net/auth): HMAC against RFC 4231, the handshake state machines
// driven over byte strings, refusals (wrong secret, tampered, replayed or reflected proofs, other
// protocol versions, garbage), the auth frame decoder, and the secret file's rules.
#include "common/net/auth.hpp"

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <concepts>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <ostream>
#include <random>

using namespace ptrain;
using namespace ptrain::net;

namespace {

std::string hex(std::span<const unsigned char> b) {
  std::string s;
  for (unsigned char c : b) s += fmt::format("{:02x}", c);
  return s;
}

std::span<const unsigned char> bytes_of(std::string_view s) {
  return {reinterpret_cast<const unsigned char*>(s.data()), s.size()};
}

struct TempDir {
  std::string path;
  TempDir() {
    std::string t = (std::filesystem::temp_directory_path() / "ptrain-auth-XXXXXX").string();
    REQUIRE(::mkdtemp(t.data()) != nullptr);
    path = t;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return path + "/" + name; }
};

void write_plain(const std::string& path, const std::string& text, mode_t mode) {
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << text;
  }
  REQUIRE(::chmod(path.c_str(), mode) == 0);
}

// Decodes one whole auth frame (REQUIREs it is good and uses every byte).
AuthFrame decode_one(const std::vector<std::byte>& bytes) {
  const AuthDecodeResult r = decode_auth(bytes);
  REQUIRE_MESSAGE(r.status == proto::DecodeStatus::kGood, r.error);
  REQUIRE(r.frame_size == bytes.size());
  return r.frame;
}

// Feeds `bytes` one at a time: kNeedMore until the last byte, then kGood.
AuthFrame decode_bytewise(const std::vector<std::byte>& bytes) {
  for (size_t n = 0; n < bytes.size(); ++n) {
    const AuthDecodeResult r = decode_auth(std::span(bytes.data(), n));
    REQUIRE_MESSAGE(r.status == proto::DecodeStatus::kNeedMore, "at ", n, ": ", r.error);
    if (n >= kAuthHeaderSize) CHECK(r.frame_size == bytes.size());
  }
  return decode_one(bytes);
}

struct Outcome {
  AuthState client = AuthState::kContinue;
  AuthState server = AuthState::kContinue;
  std::string client_reason, server_reason;
};

// Runs a whole handshake between the two state machines over encoded bytes.
Outcome run_handshake(ClientHandshake& c, ServerHandshake& s) {
  Outcome o;
  AuthStep ss = s.on_frame(decode_bytewise(c.hello()));
  o.server = ss.state, o.server_reason = ss.reason;
  REQUIRE(!ss.send.empty());
  AuthStep cs = c.on_frame(decode_bytewise(ss.send));
  o.client = cs.state, o.client_reason = cs.reason;
  if (cs.state == AuthState::kRefused && !cs.send.empty()) {  // the client's parting words
    ss = s.on_frame(decode_bytewise(cs.send));
    o.server = ss.state, o.server_reason = ss.reason;
    CHECK(ss.send.empty());
  }
  if (cs.state != AuthState::kContinue || ss.state != AuthState::kContinue) return o;
  ss = s.on_frame(decode_bytewise(cs.send));
  o.server = ss.state, o.server_reason = ss.reason;
  REQUIRE(!ss.send.empty());
  cs = c.on_frame(decode_bytewise(ss.send));
  o.client = cs.state, o.client_reason = cs.reason;
  CHECK(cs.send.empty());
  return o;
}

template <class T>
concept Streamable = requires(std::ostream& os, const T& t) { os << t; };

}  // namespace

// The secret is unprintable by construction.
static_assert(!fmt::is_formattable<Secret>::value, "a Secret must have no fmt formatter");
static_assert(!Streamable<Secret>, "a Secret must have no operator<<");
static_assert(!std::convertible_to<Secret, std::string>);
static_assert(!std::convertible_to<Secret, std::string_view>);

TEST_CASE("auth: HMAC-SHA256 matches the RFC 4231 test vectors") {
  // Test case 1: key = 20 bytes of 0x0b, data = "Hi There".
  const std::vector<unsigned char> key1(20, 0x0b);
  CHECK(hex(hmac_sha256(key1, bytes_of("Hi There"))) ==
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
  // Test case 2: key = "Jefe", data = "what do ya want for nothing?".
  CHECK(hex(hmac_sha256(bytes_of("Jefe"), bytes_of("what do ya want for nothing?"))) ==
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  // Test case 6: a 131-byte key (longer than the block size, hashed first).
  const std::vector<unsigned char> key6(131, 0xaa);
  CHECK(hex(hmac_sha256(key6, bytes_of("Test Using Larger Than Block-Size Key - Hash Key First"))) ==
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
}

TEST_CASE("auth: proofs bind the secret - the side - the role and both nonces") {
  const Secret s("correct horse battery staple");
  const Nonce a = random_nonce(), b = random_nonce();
  CHECK(a != b);
  const Proof p = compute_proof(s, AuthSide::kClient, Role::kWorker, a, b);
  CHECK(verify_proof(s, AuthSide::kClient, Role::kWorker, a, b, p));
  CHECK(p == compute_proof(s, AuthSide::kClient, Role::kWorker, a, b));  // deterministic
  CHECK_FALSE(verify_proof(Secret("correct horse battery stapler"), AuthSide::kClient,
                           Role::kWorker, a, b, p));
  CHECK_FALSE(verify_proof(s, AuthSide::kServer, Role::kWorker, a, b, p));
  CHECK_FALSE(verify_proof(s, AuthSide::kClient, Role::kServer, a, b, p));
  CHECK_FALSE(verify_proof(s, AuthSide::kClient, Role::kWorker, b, a, p));
  for (size_t i = 0; i < kProofSize; i += 7) {
    Proof q = p;
    q[i] ^= 0x01;
    CHECK_FALSE(verify_proof(s, AuthSide::kClient, Role::kWorker, a, b, q));
  }
}

TEST_CASE("auth: handshake succeeds with the same secret - both ways proven") {
  const Secret secret = generate_secret();
  CHECK(secret.size() == 64);
  for (Role client_role : {Role::kWorker, Role::kServer}) {
    ClientHandshake c(secret, client_role);
    ServerHandshake s(secret, Role::kCoordinator);
    const Outcome o = run_handshake(c, s);
    CHECK(o.client == AuthState::kAccepted);
    CHECK(o.server == AuthState::kAccepted);
    CHECK(s.client_role() == client_role);
    CHECK(c.server_role() == Role::kCoordinator);
  }
  // Every frame of the exchange stays within the pre-auth limit.
  ClientHandshake c(secret, Role::kWorker);
  ServerHandshake s(secret, Role::kServer);
  CHECK(c.hello().size() <= kMaxAuthFrame);
  const AuthStep ch = s.on_frame(decode_one(c.hello()));
  CHECK(ch.send.size() <= kMaxAuthFrame);
  CHECK(encode_auth(AuthResult{false, std::string(1000, 'x')}).size() <= kMaxAuthFrame);
}

TEST_CASE("auth: a wrong secret is refused by either side") {
  const Secret good = generate_secret(), bad = generate_secret();

  SUBCASE("the client does not accept a server without the secret") {
    ClientHandshake c(good, Role::kWorker);
    ServerHandshake s(bad, Role::kCoordinator);
    const Outcome o = run_handshake(c, s);
    CHECK(o.client == AuthState::kRefused);
    CHECK(o.client_reason.find("does not know this job's secret") != std::string::npos);
    // The server hears of it at once from the client's refusal, with the same words.
    CHECK(o.server == AuthState::kRefused);
    CHECK(o.server_reason.find("the job secret does not match") != std::string::npos);
  }
  SUBCASE("the server refuses a client whose proof uses another secret") {
    const Nonce cn = random_nonce();
    ServerHandshake s(good, Role::kCoordinator);
    const AuthStep ch = s.on_frame(AuthHello{proto::kProtocolVersion, Role::kWorker, cn});
    REQUIRE(ch.state == AuthState::kContinue);
    const auto challenge = std::get<AuthChallenge>(decode_one(ch.send));
    const Proof forged = compute_proof(bad, AuthSide::kClient, Role::kWorker, challenge.nonce, cn);
    const AuthStep res = s.on_frame(decode_one(encode_auth(AuthProof{forged})));
    CHECK(res.state == AuthState::kRefused);
    CHECK(res.reason.find("does not match this job's secret") != std::string::npos);
    // The refusal travels to the client, which reports the server's reason.
    const auto result = std::get<AuthResult>(decode_one(res.send));
    CHECK_FALSE(result.accepted);
    CHECK(result.reason == res.reason);
    ClientHandshake c(bad, Role::kWorker);
    const AuthStep cs = c.on_frame(result);
    CHECK(cs.state == AuthState::kRefused);
    CHECK(cs.reason.find("refused by the peer") != std::string::npos);
  }
}

TEST_CASE("auth: tampered - replayed and reflected proofs are refused") {
  const Secret secret = generate_secret();

  SUBCASE("a bit flipped in the server's proof") {
    ClientHandshake c(secret, Role::kWorker);
    ServerHandshake s(secret, Role::kCoordinator);
    AuthStep ch = s.on_frame(decode_one(c.hello()));
    ch.send.back() ^= std::byte{0x80};  // the last byte of the Challenge is the proof's
    const AuthStep cs = c.on_frame(decode_one(ch.send));
    CHECK(cs.state == AuthState::kRefused);
    // The client proves nothing to an impostor: it only says why it leaves.
    const auto said = std::get<AuthResult>(decode_one(cs.send));
    CHECK_FALSE(said.accepted);
    CHECK(said.reason.find("the job secret does not match") != std::string::npos);
  }
  SUBCASE("a bit flipped in the client's proof") {
    ClientHandshake c(secret, Role::kWorker);
    ServerHandshake s(secret, Role::kCoordinator);
    const AuthStep ch = s.on_frame(decode_one(c.hello()));
    AuthStep cs = c.on_frame(decode_one(ch.send));
    REQUIRE(cs.state == AuthState::kContinue);
    cs.send[kAuthHeaderSize + 5] ^= std::byte{0x01};
    const AuthStep res = s.on_frame(decode_one(cs.send));
    CHECK(res.state == AuthState::kRefused);
    CHECK_FALSE(std::get<AuthResult>(decode_one(res.send)).accepted);
  }
  SUBCASE("a recorded proof replayed on a new connection") {
    ClientHandshake c(secret, Role::kWorker);
    ServerHandshake s1(secret, Role::kCoordinator);
    const auto hello = c.hello();
    const AuthStep ch = s1.on_frame(decode_one(hello));
    const AuthStep cs = c.on_frame(decode_one(ch.send));
    REQUIRE(cs.state == AuthState::kContinue);
    // An eavesdropper replays the same Hello and Proof to a fresh server session.
    ServerHandshake s2(secret, Role::kCoordinator);
    REQUIRE(s2.on_frame(decode_one(hello)).state == AuthState::kContinue);
    CHECK(s2.on_frame(decode_one(cs.send)).state == AuthState::kRefused);
  }
  SUBCASE("the server's own proof reflected back to it") {
    const Nonce cn = random_nonce();
    ServerHandshake s(secret, Role::kCoordinator);
    const AuthStep ch = s.on_frame(AuthHello{proto::kProtocolVersion, Role::kCoordinator, cn});
    const auto challenge = std::get<AuthChallenge>(decode_one(ch.send));
    CHECK(s.on_frame(AuthProof{challenge.proof}).state == AuthState::kRefused);
  }
  SUBCASE("frames out of order") {
    ServerHandshake s(secret, Role::kCoordinator);
    CHECK(s.on_frame(AuthProof{}).state == AuthState::kRefused);
    ClientHandshake c(secret, Role::kWorker);
    CHECK(c.on_frame(AuthResult{true, ""}).state == AuthState::kRefused);  // no challenge yet
    CHECK(c.on_frame(AuthHello{}).state == AuthState::kRefused);
  }
}

TEST_CASE("auth: another protocol version is refused naming both versions") {
  const Secret secret = generate_secret();
  ServerHandshake s(secret, Role::kCoordinator);
  AuthHello h{static_cast<uint16_t>(proto::kProtocolVersion + 6), Role::kWorker, random_nonce()};
  const AuthStep r = s.on_frame(decode_one(encode_auth(h)));
  CHECK(r.state == AuthState::kRefused);
  CHECK(r.reason.find(fmt::format("protocol version {}", proto::kProtocolVersion + 6)) !=
        std::string::npos);
  CHECK(r.reason.find(fmt::format("speaks protocol version {}", proto::kProtocolVersion)) !=
        std::string::npos);
  CHECK(std::get<AuthResult>(decode_one(r.send)).reason == r.reason);
}

TEST_CASE("auth: frame codec round trips and refuses what does not fit") {
  const AuthFrame frames[] = {
      AuthHello{proto::kProtocolVersion, Role::kServer, random_nonce()},
      AuthChallenge{Role::kCoordinator, random_nonce(), Proof{1, 2, 3}},
      AuthProof{Proof{9, 8, 7}},
      AuthResult{true, ""},
      AuthResult{false, "wrong secret"},
  };
  for (const auto& f : frames) {
    const auto bytes = encode_auth(f);
    CHECK(bytes.size() <= kMaxAuthFrame);
    CHECK(decode_bytewise(bytes) == f);
    // Trailing bytes (the first protocol frame) are left for the caller.
    auto more = bytes;
    more.resize(bytes.size() + 10, std::byte{0x42});
    const auto r = decode_auth(more);
    CHECK(r.status == proto::DecodeStatus::kGood);
    CHECK(r.frame_size == bytes.size());
  }
  // A long reason is cut to kMaxReason; control characters are replaced.
  const auto cut = std::get<AuthResult>(decode_one(encode_auth(AuthResult{false, std::string(500, 'a')})));
  CHECK(cut.reason.size() == kMaxReason);
  CHECK(std::get<AuthResult>(decode_one(encode_auth(AuthResult{false, "a\nb\x1b"}))).reason ==
        "a?b?");

  auto bad = [](std::vector<std::byte> b) {
    const auto r = decode_auth(b);
    CHECK(r.status == proto::DecodeStatus::kBad);
    return r.error;
  };
  auto as_bytes = [](std::string_view s) {
    std::vector<std::byte> b(s.size());
    std::memcpy(b.data(), s.data(), s.size());
    return b;
  };
  CHECK(bad(as_bytes("GET / HTTP/1.1\r\n")).find("HTTP") != std::string::npos);
  CHECK(bad(as_bytes("PTRN\x01\x00\x02\x00")).find("protocol frame before authenticating") !=
        std::string::npos);
  CHECK(bad(as_bytes("xyzw")).find("not a ptrain auth frame") != std::string::npos);
  auto hello = encode_auth(frames[0]);
  auto v2 = hello;
  v2[4] = std::byte{2};
  CHECK(bad(v2).find("auth version 2") != std::string::npos);
  auto kind = hello;
  kind[5] = std::byte{9};
  CHECK(bad(kind).find("kind 9") != std::string::npos);
  auto len = hello;
  len[6] = std::byte{0xff};
  len[7] = std::byte{0xff};  // 65535 announced: refused from the header, before any body
  len.resize(kAuthHeaderSize);
  CHECK(bad(len).find("body") != std::string::npos);
  auto role = hello;
  role[kAuthHeaderSize + 2] = std::byte{7};
  CHECK(bad(role).find("role 7") != std::string::npos);
  auto result = encode_auth(AuthResult{false, "abc"});
  result[kAuthHeaderSize] = std::byte{5};
  CHECK(bad(result).find("accepted = 5") != std::string::npos);
  auto reason_len = encode_auth(AuthResult{false, "abc"});
  reason_len[kAuthHeaderSize + 1] = std::byte{4};
  CHECK(bad(reason_len).find("reason") != std::string::npos);
  // Short inputs are never an error by themselves.
  CHECK(decode_auth({}).status == proto::DecodeStatus::kNeedMore);
  CHECK(decode_auth(std::span(hello.data(), 3)).status == proto::DecodeStatus::kNeedMore);
}

TEST_CASE("auth: random bytes never crash the auth decoder") {
  std::mt19937_64 rng(1234);
  std::vector<std::byte> buf;
  for (int i = 0; i < 20000; ++i) {
    buf.resize(rng() % 300);
    for (auto& b : buf) b = std::byte(static_cast<unsigned char>(rng()));
    if (i % 2 == 0 && buf.size() >= 6) {  // mostly-valid headers reach the body checks
      const auto h = encode_auth(AuthProof{});
      std::memcpy(buf.data(), h.data(), 5);
      buf[5] = std::byte(static_cast<unsigned char>(1 + rng() % 4));
    }
    const auto r = decode_auth(buf);
    if (r.status == proto::DecodeStatus::kGood) CHECK(r.frame_size <= kMaxAuthFrame);
    if (r.status == proto::DecodeStatus::kBad) CHECK(!r.error.empty());
  }
}

TEST_CASE("auth: secret files are 0600 - atomic - never overwritten by accident") {
  TempDir dir;
  const std::string path = dir.file("secret");
  const Secret written = write_secret_file(path);
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  const std::string text = [&] {
    std::ifstream in(path);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }();
  REQUIRE(text.size() == 65);
  CHECK(text.back() == '\n');
  CHECK(text.find_first_not_of("0123456789abcdef") == 64);
  const Secret read = read_secret_file(path);
  CHECK(std::equal(read.key().begin(), read.key().end(), written.key().begin(),
                   written.key().end()));
  // No temp files are left behind.
  CHECK(std::distance(std::filesystem::directory_iterator(dir.path), {}) == 1);

  // Refuses to replace an existing file, which stays as it was.
  CHECK_THROWS_WITH_AS(write_secret_file(path), doctest::Contains("already exists"), IoError);
  const Secret still = read_secret_file(path);
  CHECK(std::equal(still.key().begin(), still.key().end(), written.key().begin(),
                   written.key().end()));
  // ... unless asked.
  const Secret fresh = write_secret_file(path, OverwriteSecret::kYes);
  const Secret now = read_secret_file(path);
  CHECK(std::equal(now.key().begin(), now.key().end(), fresh.key().begin(), fresh.key().end()));
  CHECK_FALSE(std::equal(now.key().begin(), now.key().end(), written.key().begin(),
                         written.key().end()));
  CHECK(std::distance(std::filesystem::directory_iterator(dir.path), {}) == 1);

  // Written into a folder that does not exist: an error naming the path.
  CHECK_THROWS_WITH_AS(write_secret_file(dir.file("nope/secret")), doctest::Contains("nope/secret"),
                       IoError);
}

TEST_CASE("auth: reading a secret file refuses unsafe or unusable files") {
  TempDir dir;
  const std::string path = dir.file("s");

  SUBCASE("missing: the error names the path") {
    CHECK_THROWS_WITH_AS(read_secret_file(dir.file("absent")), doctest::Contains(dir.file("absent").c_str()),
                         IoError);
  }
  SUBCASE("readable by group or others") {
    for (mode_t mode : {0644, 0640, 0604, 0660, 0602}) {
      write_plain(path, "abc\n", mode);
      CHECK_THROWS_WITH_AS(read_secret_file(path), doctest::Contains("chmod 600"), IoError);
    }
    write_plain(path, "abc\n", 0400);
    CHECK(read_secret_file(path).size() == 3);
  }
  SUBCASE("empty, or only a newline") {
    for (const char* text : {"", "\n", "\r\n"}) {
      write_plain(path, text, 0600);
      CHECK_THROWS_WITH_AS(read_secret_file(path), doctest::Contains("is empty"), IoError);
    }
  }
  SUBCASE("the trailing newline is not part of the key; other bytes are") {
    write_plain(path, "s3cret\n", 0600);
    const Secret a = read_secret_file(path);
    write_plain(path, "s3cret\r\n", 0600);
    const Secret b = read_secret_file(path);
    write_plain(path, "s3cret", 0600);
    const Secret c = read_secret_file(path);
    const Secret expect("s3cret");
    for (const Secret* s : {&a, &b, &c}) {
      CHECK(std::equal(s->key().begin(), s->key().end(), expect.key().begin(),
                       expect.key().end()));
    }
    write_plain(path, "s3cret \n", 0600);
    CHECK(read_secret_file(path).size() == 7);
  }
  SUBCASE("a directory or an oversized file") {
    std::filesystem::create_directory(dir.file("d"));
    ::chmod(dir.file("d").c_str(), 0700);
    CHECK_THROWS_WITH_AS(read_secret_file(dir.file("d")), doctest::Contains("not a regular file"),
                         IoError);
    write_plain(path, std::string(5000, 'x'), 0600);
    CHECK_THROWS_WITH_AS(read_secret_file(path), doctest::Contains(path.c_str()), IoError);
  }
  SUBCASE("an empty secret cannot be made at all") {
    CHECK_THROWS_AS(Secret(""), IoError);
  }
}

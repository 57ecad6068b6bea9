// Role log naming and rotation (role_logs.hpp).
#include "launch/role_logs.hpp"

#include "common/error.hpp"
#include "common/net/cluster_join.hpp"

#include <fmt/format.h>

#include <charconv>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>

namespace ptrain {
namespace {

namespace fs = std::filesystem;

const char* role_word(net::Role r) {
  switch (r) {
    case net::Role::kCoordinator: return "coordinator";
    case net::Role::kServer: return "server";
    case net::Role::kWorker: return "worker";
  }
  return "role";
}

void rename_or_throw(const fs::path& from, const fs::path& to) {
  std::error_code ec;
  fs::rename(from, to, ec);
  if (ec) {
    throw IoError(fmt::format("cannot rename the log {} to {}: {}", from.string(), to.string(),
                              ec.message()));
  }
}

}  // namespace

void rotate_role_logs(const std::string& logs_dir, int keep) {
  std::error_code ec;
  if (!fs::is_directory(logs_dir, ec)) return;
  // NAME.log (current) and NAME.N.log (kept), NAME a role log's name.
  static const std::regex kLog(R"(((?:coordinator|server|worker)-(?:pending-)?\d+)(?:\.(\d+))?\.log)");
  std::map<std::string, int> newest;  // NAME -> highest N kept (0: only the current one)
  std::map<std::string, bool> current;
  for (const auto& e : fs::directory_iterator(logs_dir, ec)) {
    std::smatch m;
    const std::string name = e.path().filename().string();
    if (!std::regex_match(name, m, kLog)) continue;
    const std::string base = m[1];
    int n = 0;
    if (m[2].matched) {
      const std::string digits = m[2];
      std::from_chars(digits.data(), digits.data() + digits.size(), n);
    }
    if (n == 0) current[base] = true;
    newest[base] = std::max(newest[base], n);
  }
  if (ec) throw IoError(fmt::format("cannot list {}: {}", logs_dir, ec.message()));
  const fs::path dir(logs_dir);
  for (const auto& [base, top] : newest) {
    if (!current[base]) continue;  // nothing new to keep under this name
    for (int n = top; n >= 1; --n) {
      const fs::path from = dir / fmt::format("{}.{}.log", base, n);
      if (!fs::exists(from, ec)) continue;
      if (n + 1 > keep) {
        fs::remove(from, ec);
        if (ec) throw IoError(fmt::format("cannot remove the old log {}: {}", from.string(), ec.message()));
      } else {
        rename_or_throw(from, dir / fmt::format("{}.{}.log", base, n + 1));
      }
    }
    const fs::path cur = dir / (base + ".log");
    if (keep >= 1) {
      rename_or_throw(cur, dir / fmt::format("{}.1.log", base));
    } else {
      fs::remove(cur, ec);
    }
  }
}

std::optional<net::Endpoint> joined_as(std::string_view text) {
  const size_t at = text.find(net::kJoinedLine);
  if (at == std::string_view::npos) return std::nullopt;
  std::string_view rest = text.substr(at + net::kJoinedLine.size());
  net::Endpoint e;
  if (rest.starts_with("server ")) {
    e.role = net::Role::kServer;
    rest.remove_prefix(7);
  } else if (rest.starts_with("worker ")) {
    e.role = net::Role::kWorker;
    rest.remove_prefix(7);
  } else {
    return std::nullopt;
  }
  const size_t eol = rest.find('\n');
  if (eol == std::string_view::npos) return std::nullopt;  // the line is not whole yet
  const std::string_view digits = rest.substr(0, eol);
  const auto [end, err] = std::from_chars(digits.data(), digits.data() + digits.size(), e.id);
  if (err != std::errc() || end != digits.data() + digits.size() || e.id < 0) return std::nullopt;
  return e;
}

std::string role_log_name(const net::Endpoint& e) {
  return fmt::format("{}-{}.log", role_word(e.role), e.id);
}

std::string pending_log_name(net::Role role, int64_t start_index) {
  return fmt::format("{}-pending-{}.log", role_word(role), start_index);
}

PendingRoleLog::PendingRoleLog(std::string logs_dir, net::Role role, int64_t start_index)
    : dir_(std::move(logs_dir)),
      path_((fs::path(dir_) / pending_log_name(role, start_index)).string()) {}

bool PendingRoleLog::poll() {
  if (joined) return true;
  std::ifstream in(path_, std::ios::binary);
  if (!in) return false;
  std::string head(64 * 1024, '\0');
  in.read(head.data(), static_cast<std::streamsize>(head.size()));
  head.resize(static_cast<size_t>(in.gcount()));
  const std::optional<net::Endpoint> e = joined_as(head);
  if (!e) return false;
  const std::string to = (fs::path(dir_) / role_log_name(*e)).string();
  rename_or_throw(path_, to);
  path_ = to;
  joined = e;
  return true;
}

}  // namespace ptrain

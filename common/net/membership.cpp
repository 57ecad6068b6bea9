// Membership's table and FixedMembership (membership.hpp).
#include "common/net/membership.hpp"

#include "common/error.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace ptrain::net {

std::string Member::label() const {
  return address.empty() ? endpoint.str() : fmt::format("{} ({})", endpoint.str(), address);
}

const char* change_name(MembershipChange c) {
  switch (c) {
    case MembershipChange::kJoined: return "joined";
    case MembershipChange::kLeft: return "left";
    case MembershipChange::kLost: return "lost";
  }
  return "changed";
}

std::vector<Member> Membership::members() const {
  std::lock_guard lock(mu_);
  return members_;
}

namespace {
std::vector<Endpoint> of_role(const std::vector<Member>& all, Role role) {
  std::vector<Endpoint> out;
  for (const auto& m : all) {
    if (m.endpoint.role == role) out.push_back(m.endpoint);
  }
  return out;
}
}  // namespace

std::vector<Endpoint> Membership::servers() const { return of_role(members(), Role::kServer); }
std::vector<Endpoint> Membership::workers() const { return of_role(members(), Role::kWorker); }

std::optional<Member> Membership::find(const Endpoint& e) const {
  std::lock_guard lock(mu_);
  for (const auto& m : members_) {
    if (m.endpoint == e) return m;
  }
  return std::nullopt;
}

int64_t Membership::epoch() const {
  std::lock_guard lock(mu_);
  return epoch_;
}

bool Membership::started() const {
  std::lock_guard lock(mu_);
  return started_;
}

std::vector<MembershipEvent> Membership::take_events() {
  std::lock_guard lock(mu_);
  std::vector<MembershipEvent> out;
  out.swap(events_);
  return out;
}

bool Membership::report_lost(const Endpoint& e, const std::string& reason) {
  return remove_member(e, MembershipChange::kLost, reason);
}

bool Membership::report_left(const Endpoint& e, const std::string& reason) {
  return remove_member(e, MembershipChange::kLeft, reason);
}

void Membership::start() {
  std::lock_guard lock(mu_);
  started_ = true;
}

void Membership::bump_and_queue(MembershipChange change, const Member& m, std::string reason) {
  if (started_) ++epoch_;
  events_.push_back({change, m, epoch_, std::move(reason)});
}

Member Membership::add_member(Role role, std::string host, std::string address,
                              std::string name) {
  PTRAIN_ENFORCE(role == Role::kServer || role == Role::kWorker, "a member is a server or worker");
  std::lock_guard lock(mu_);
  int32_t& next = role == Role::kServer ? next_server_ : next_worker_;
  Member m{Endpoint{role, next++}, std::move(host), std::move(address), std::move(name)};
  members_.insert(std::upper_bound(members_.begin(), members_.end(), m,
                                   [](const Member& a, const Member& b) {
                                     return a.endpoint < b.endpoint;
                                   }),
                  m);
  bump_and_queue(MembershipChange::kJoined, m, "");
  return m;
}

bool Membership::remove_member(const Endpoint& e, MembershipChange change,
                               const std::string& reason) {
  PTRAIN_ENFORCE(change != MembershipChange::kJoined, "removing {} as a join", e.str());
  std::lock_guard lock(mu_);
  auto it = std::find_if(members_.begin(), members_.end(),
                         [&](const Member& m) { return m.endpoint == e; });
  if (it == members_.end()) return false;
  const Member m = *it;
  members_.erase(it);
  bump_and_queue(change, m, reason);
  return true;
}

int32_t Membership::added(Role role) const {
  std::lock_guard lock(mu_);
  return role == Role::kServer ? next_server_ : next_worker_;
}

FixedMembership::FixedMembership(int64_t servers, int64_t workers, const std::string& host) {
  if (servers < 0 || workers < 0) {
    throw ConfigError(fmt::format("a fixed membership of {} server(s) and {} worker(s)", servers,
                                  workers));
  }
  for (int64_t k = 0; k < servers; ++k) add_member(Role::kServer, host, "", "");
  for (int64_t w = 0; w < workers; ++w) add_member(Role::kWorker, host, "", "");
  take_events();  // the launch's own members: nothing happened yet
  start();
}

FixedMembership::FixedMembership(std::vector<Member> members) {
  std::sort(members.begin(), members.end(),
            [](const Member& a, const Member& b) { return a.endpoint < b.endpoint; });
  for (const Member& m : members) {
    if (m.endpoint.role != Role::kServer && m.endpoint.role != Role::kWorker) {
      throw ConfigError(fmt::format("a fixed membership lists {}: only servers and workers are "
                                    "members",
                                    m.endpoint.str()));
    }
    const int32_t want = added(m.endpoint.role);
    if (m.endpoint.id < want) {
      throw ConfigError(fmt::format("a fixed membership lists {} twice", m.endpoint.str()));
    }
    if (m.endpoint.id > want) {
      throw ConfigError(fmt::format("a fixed membership lists {} but not {}: ids of a role are "
                                    "0..n-1",
                                    m.endpoint.str(), Endpoint{m.endpoint.role, want}.str()));
    }
    add_member(m.endpoint.role, m.host, m.address, m.name);
  }
  take_events();
  start();
}

}  // namespace ptrain::net

// Membership, beside the Transport: who is in the job (servers and workers, each an Endpoint with
// the host it runs on), the membership epoch, and the changes (a member joined, left, or was lost)
// as a queue of events that the coordinator drains. The Transport moves messages; this says who
// may send and receive them.
//
// Rules every implementation keeps (the base class holds the table and enforces them):
//   - ids are stable per member and never reused: a worker lost as id 3 leaves a hole at 3;
//   - the epoch is 0 when the job starts (start()); every later change bumps it by one;
//   - changes before start() (the job being assembled, e.g. registrations) are queued as events
//     but do not bump the epoch: the membership the job starts with is epoch 0;
//   - a member leaves or is lost at most once: a second report of the same loss is ignored, so
//     the network thread and the coordinator may both report it.
// Thread-safe: implementations are fed from network threads while the coordinator reads.
//
// Implementations: FixedMembership (below; the threads launch, and the model for MPI ranks), and
// the coordinator's TCP registration (coordinator/registrar.hpp: a Register is a join, a dropped
// connection or missed heartbeats is a loss). What a loss MEANS for the job (stop, or complete the
// step without it) is not decided here but by whoever drains the events.
#pragma once

#include "common/net/transport.hpp"

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace ptrain::net {

struct Member {
  Endpoint endpoint;
  std::string host;     // where it runs, as /status shows it ("local" in-process, else its IP)
  std::string address;  // its connection's "HOST:PORT" as the coordinator sees it ("" in-process)
  std::string name;     // the host name it reported for itself ("" when unknown)
  // "worker 1 (127.0.0.1:41234)", or "worker 1" without an address: how messages name it.
  std::string label() const;
  bool operator==(const Member&) const = default;
};

enum class MembershipChange : uint8_t { kJoined, kLeft, kLost };
const char* change_name(MembershipChange c);  // "joined", "left", "lost"

struct MembershipEvent {
  MembershipChange change = MembershipChange::kJoined;
  Member member;
  int64_t epoch = 0;   // the membership epoch right after this change
  std::string reason;  // kLeft / kLost: why, naming the member; "" for kJoined
};

class Membership {
 public:
  virtual ~Membership() = default;
  Membership(const Membership&) = delete;
  Membership& operator=(const Membership&) = delete;

  // Every current member, servers first, then workers, each by ascending id.
  std::vector<Member> members() const;
  std::vector<Endpoint> servers() const;  // ascending id
  std::vector<Endpoint> workers() const;  // ascending id
  std::optional<Member> find(const Endpoint& e) const;
  int64_t epoch() const;
  bool started() const;

  // The changes since the last call, oldest first.
  std::vector<MembershipEvent> take_events();

  // The caller found `e` unreachable (e.g. a send failed): a kLost event, unless `e` is not (or no
  // longer) a member. Returns whether this was news.
  bool report_lost(const Endpoint& e, const std::string& reason);
  // `e` said goodbye (a worker leaving at a step boundary): a kLeft event, unless `e` is not (or
  // no longer) a member. Returns whether this was news.
  bool report_left(const Endpoint& e, const std::string& reason);

  // The job starts with the members present now, as epoch 0; every later change bumps the epoch.
  void start();

 protected:
  Membership() = default;
  // For implementations: adds a member under the next unused id of its role; queues kJoined.
  Member add_member(Role role, std::string host, std::string address, std::string name);
  // Removes `e` (kLeft or kLost) and queues the event; false when `e` is not a member.
  bool remove_member(const Endpoint& e, MembershipChange change, const std::string& reason);
  // Number of members of `role` ever added (the next id of that role).
  int32_t added(Role role) const;

 private:
  void bump_and_queue(MembershipChange change, const Member& m, std::string reason);  // mu_ held

  mutable std::mutex mu_;
  std::vector<Member> members_;  // kept sorted by endpoint (servers before workers, ascending id)
  std::vector<MembershipEvent> events_;
  int64_t epoch_ = 0;
  bool started_ = false;
  int32_t next_server_ = 0;
  int32_t next_worker_ = 0;
};

// A membership fixed by the launch: `servers` servers and `workers` workers with ids 0..S-1 and
// 0..W-1 on `host`, started (epoch 0). Nobody joins; a member reported lost is removed (its kLost
// event bumps the epoch). The threads launch uses it with host "local".
//
// MPI ranks are the same shape: the launch's rank map (e.g. rank 0 the coordinator, ranks 1..S the
// servers, the rest workers) gives every member its Endpoint, MPI_Get_processor_name its host; build
// the list with FixedMembership(std::vector<Member>) and report a failed rank with report_lost().
class FixedMembership final : public Membership {
 public:
  FixedMembership(int64_t servers, int64_t workers, const std::string& host);
  // Members given one by one, in any order; ids of each role must be 0..n-1 (throws ConfigError
  // naming the first missing or repeated one).
  explicit FixedMembership(std::vector<Member> members);
};

}  // namespace ptrain::net

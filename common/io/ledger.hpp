// RUN_DIR/ledger.jsonl: the data ledger anyone can check (docs/elastic.md). Appended, one JSON
// object per line:
//   per applied training step and data epoch of its windows
//     {"step": t, "data_epoch": e, "windows": [i, ...], "time": UNIX_SECONDS}
//   (`step` = optimizer steps applied once it is applied, as in train.jsonl; `windows` = exactly
//   the window indices of data.train whose gradients it applied; a step whose windows come from
//   two data epochs — a batch spanning an epoch's end, or windows given back from an earlier
//   epoch — has one line per epoch, in the order its windows were handed out);
//   with cluster.sync ssp or async (every step one worker's push) each step line also carries
//     "worker": W, "base_version": V (the weights version its gradient was computed from),
//     "staleness": t - 1 - V (updates applied between its read and its own update) and
//     "ahead": A (pushes it was ahead of the slowest worker when its work was granted;
//     ssp keeps A <= cluster.staleness)
//   per membership event
//     {"event": "join"|"leave"|"lost"|"restart"|"resume", "role": R, "id": N, "step": t,
//      "time": UNIX_SECONDS}.
// A resumed run trims the lines whose step is past its resume step (those steps are run again)
// before appending. Written by the coordinator (steps, join/leave/lost/resume) and by the `ptrain
// run` supervisor (restart); each line is one write() on an O_APPEND descriptor.
//
// The check (check_ledger): in bsp, within a data epoch no window appears twice; every data epoch
// before the cursor's (the final checkpoint's /data) lists every window except those still in its
// returned pool, which must not appear.
#pragma once

#include "common/io/checkpoint_format.hpp"

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace ptrain {

class LedgerWriter {
 public:
  // Opens RUN_DIR/ledger.jsonl for appending, first removing every line whose "step" is greater
  // than `resume_step` (a fresh run passes 0: every step line goes). IoError naming the file.
  LedgerWriter(const std::string& run_dir, int64_t resume_step);
  ~LedgerWriter();
  LedgerWriter(const LedgerWriter&) = delete;
  LedgerWriter& operator=(const LedgerWriter&) = delete;

  // ssp/async: who pushed the step and how stale its gradient was (the fields above).
  struct PushRecord {
    int32_t worker = 0;
    int64_t base_version = 0;
    int64_t staleness = 0;
    int64_t ahead = 0;
  };
  // Step `step` (steps applied) applied these windows, in hand-out order.
  void step(int64_t step, const std::vector<DataWindow>& windows,
            const std::optional<PushRecord>& push = std::nullopt);
  // kind: join, leave, lost, restart, resume; role: "worker", "server", "coordinator".
  void event(const std::string& kind, const std::string& role, int64_t id, int64_t step);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
};

// One event line appended to RUN_DIR/ledger.jsonl without a writer (the supervisor's restarts).
void append_ledger_event(const std::string& run_dir, const std::string& kind,
                         const std::string& role, int64_t id, int64_t step);

struct LedgerCheck {
  int64_t num_windows = 0;      // windows of data.train
  int64_t last_step = 0;        // highest step line
  int64_t step_lines = 0;
  std::map<std::string, int64_t> events;          // by kind
  std::map<int64_t, int64_t> windows_per_epoch;   // applied windows by data epoch
  std::vector<int64_t> complete_epochs;           // epochs checked for completeness
  int64_t doubled = 0;          // windows applied twice within an epoch
  int64_t missing = 0;          // windows of a completed epoch never applied
  std::vector<std::string> problems;  // each naming the line, step, epoch and window (first 20)
  bool ok() const { return problems.empty(); }
  std::string to_json() const;
};

// Checks `ledger_path` against a data plan over `num_windows` windows whose cursor ended at
// `final_state` (the final checkpoint's /data; epochs before final_state.epoch must be complete
// except for windows in final_state.returned) and whose last applied step is `final_step`
// (-1 = do not check). Throws IoError for an unreadable file or a malformed line (file:line).
LedgerCheck check_ledger(const std::string& ledger_path, int64_t num_windows,
                         const DataState& final_state, int64_t final_step);

// check_ledger on RUN_DIR/ledger.jsonl with what RUN_DIR/checkpoints/latest says: its step, its
// /data, and data.train and model.seq_len from its config.
LedgerCheck check_run_ledger(const std::string& run_dir);

}  // namespace ptrain

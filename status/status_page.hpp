// The page for people: the live page at `/` and the run report (RUN_DIR/report.html), one HTML
// document with inline CSS, SVG and JavaScript and no network fetch beyond its own server. It draws
// the run's progress (step of total, elapsed, ETA), the loss curve with axes, a smoothed line and
// the validation points over it, learning-rate, gradient-norm and throughput curves from
// train.jsonl (so the history before a resume shows too), the members table, the checkpoints and
// the recent events.
// Live: the page polls /status and /train.jsonl every 2 s and updates in place (no reload); it stops
// once the run has finished. Report: the same page with the data embedded, nothing fetched.
#pragma once

#include "status/status_http.hpp"

#include <string>

namespace ptrain {

// The page served at `/`, with `s` embedded for its first paint.
std::string render_live_page(const JobStatus& s);

// A self-contained report of a run: `s` (its last status) and `train_jsonl` (RUN_DIR/train.jsonl).
std::string render_report_page(const JobStatus& s, const std::string& train_jsonl);

// RUN_DIR/status.json (render_status_json of the run's last status; written by the coordinator at
// the end of a run) and RUN_DIR/report.html. write_run_report reads RUN_DIR/train.jsonl (IoError
// naming it when missing) and status.json when present, writes report.html atomically and returns
// its path.
std::string write_run_status(const std::string& run_dir, const JobStatus& s);
std::string write_run_report(const std::string& run_dir);

}  // namespace ptrain

// What a run reports: RUN_DIR/train.jsonl (docs/formats.md: one JSON object per logged step —
// step, loss (mean over the steps since the previous line), lr, grad_norm, clipped, tokens,
// tokens_per_s, step_s, bytes_per_token, compute_s, push_s, wait_s, pull_s, elapsed_s, time — and
// per evaluation — step, val_loss, val_ppl, elapsed_s, time — each line written and flushed as
// it happens) and a progress line on stderr. A resumed run keeps the lines up to its resume step,
// drops the later ones (steps the checkpoint does not hold, which the run is about to redo) and
// continues elapsed_s from there.
#pragma once

#include <chrono>
#include <cstdint>
#include <fstream>
#include <optional>
#include <string>

namespace ptrain {

struct StepRecord {
  int64_t step = 0;        // optimizer steps applied
  double loss = 0.0;       // mean cross-entropy of the steps since the previous logged step
  double lr = 0.0;         // learning rate the step used
  double grad_norm = 0.0;  // the step's global gradient norm, before clipping
  bool clipped = false;    // whether the step's gradient was scaled down (optim.grad_clip)
  int64_t tokens = 0;      // target tokens consumed so far (whole run, resumes included)
  double elapsed_s = 0.0;  // training time of the run, continued across resumes
  double tokens_per_s = 0.0;  // since the previous logged step
  double step_s = 0.0;        // mean wall time of a step since the previous logged step
  double bytes_per_token = 0.0;  // data-plane bytes pushed + pulled per trained token, same span
  // Masked-LM accuracy (BERT) of the same steps as `loss`, their mean; absent for GPT runs (no
  // "accuracy" key is written).
  std::optional<double> accuracy;
  // Mean seconds per step in each phase, same span (written as compute_s, push_s, wait_s, pull_s):
  // the workers' pull, compute and push (averaged over workers) and the wait from a worker's
  // report to the step applied on every server.
  struct Phases {
    double compute = 0.0, push = 0.0, wait = 0.0, pull = 0.0;
  } phase_s;
};

class RunLog {
 public:
  // Opens RUN_DIR/train.jsonl: truncated when resume_step is 0; otherwise the lines past
  // resume_step (and a torn last line) are dropped and the rest kept, then appended to.
  // IoError on failure.
  RunLog(const std::string& run_dir, int64_t resume_step);
  void step(const StepRecord& r);
  void eval(int64_t step, double val_loss, double elapsed_s);
  const std::string& path() const { return path_; }
  // elapsed_s of the last line kept on resume (0 for a fresh log): where this run's clock starts.
  double elapsed_before() const { return elapsed_before_; }

 private:
  void write_line(const std::string& line);
  std::string path_;
  std::ofstream out_;
  double elapsed_before_ = 0.0;
};

// "step 120/1000 | loss 2.3456 | lr 6.00e-04 | 12345 tok/s | elapsed 1m02s | ETA 8m10s"
std::string progress_line(const StepRecord& r, int64_t total_steps, double eta_s);
// Wall-clock UTC now as ISO 8601 with milliseconds: "2026-01-31T12:34:56.789Z".
std::string iso8601_now();
// "1h02m03s", "4m05s", "12.3s"
std::string format_duration(double seconds);

}  // namespace ptrain

// What a run reports: RUN_DIR/train.jsonl (docs/contracts.md: one JSON object per logged step —
// step, loss, lr, tokens, elapsed_s, tokens_per_s — and per evaluation — step, val_loss —
// each line written and flushed as it happens) and a progress line on stderr.
#pragma once

#include <chrono>
#include <cstdint>
#include <fstream>
#include <string>

namespace ptrain {

struct StepRecord {
  int64_t step = 0;        // optimizer steps applied
  double loss = 0.0;       // mean cross-entropy of the step
  double lr = 0.0;         // learning rate the step used
  int64_t tokens = 0;      // target tokens consumed so far (whole run, resumes included)
  double elapsed_s = 0.0;  // since this process started the job
  double tokens_per_s = 0.0;  // since the previous logged step
};

class RunLog {
 public:
  // Opens RUN_DIR/train.jsonl: truncated for a fresh run, appended to on resume. IoError on
  // failure.
  RunLog(const std::string& run_dir, bool append);
  void step(const StepRecord& r);
  void eval(int64_t step, double val_loss);
  const std::string& path() const { return path_; }

 private:
  void write_line(const std::string& line);
  std::string path_;
  std::ofstream out_;
};

// "step 120/1000 | loss 2.3456 | lr 6.00e-04 | 12345 tok/s | elapsed 1m02s | ETA 8m10s"
std::string progress_line(const StepRecord& r, int64_t total_steps, double eta_s);
// "1h02m03s", "4m05s", "12.3s"
std::string format_duration(double seconds);

}  // namespace ptrain

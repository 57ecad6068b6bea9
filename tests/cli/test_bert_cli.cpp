// BERT end to end through the built `ptrain` binary: `run` (model.arch bert, threads), `eval`
// (masked-LM loss and accuracy), `fill-mask`, `grad` (/inputs masked, /labels with -100),
// `inspect` (the architecture), `generate` refused, and `finetune` on a small labelled JSONL set
// whose classes a model can tell apart, beating the majority class.
#include "common/io/hdf5.hpp"
#include "support/job_test_util.hpp"
#include "support/ptrain_process.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>
#include <sys/wait.h>

#include <cmath>
#include <fstream>
#include <map>
#include <string>
#include <vector>

using namespace ptrain;
using namespace ptrain::testing;

namespace {

struct Out {
  int rc = -1;
  std::string out, err;
};

Out ptrain_cmd(const TempDir& dir, const std::vector<std::string>& args) {
  const std::string out = dir / "out.txt", err = dir / "err.txt";
  const int status = test::wait_ptrain_status(test::start_ptrain(args, err, out));
  Out r;
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = test::slurp(out);
  r.err = test::slurp(err);
  return r;
}

}  // namespace

TEST_CASE("bert cli: run - eval - fill-mask - grad - inspect - finetune") {
  TempDir dir("bert-cli");
  write_corpus(dir / "train.tok", 30000, 1);
  write_corpus(dir / "val.tok", 2000, 2);
  const std::string cfg = dir / "bert.yaml";
  std::ofstream(cfg) << "run:\n  dir: " << dir / "run" << "\n  seed: 3\n  threads: 1\n"
                        "data:\n  train: train.tok\n  val: val.tok\n"
                        "model:\n  arch: bert\n  seq_len: 24\n  n_layer: 2\n  n_head: 2\n"
                        "  n_embd: 32\n"
                        "train:\n  steps: 60\n  batch_size: 16\n  micro_batch: 16\n"
                        "  eval_every: 0\n  log_every: 10\n"
                        "optim:\n  lr: 0.01\n  min_lr: 0.001\n  warmup_steps: 5\n"
                        "cluster:\n  launch: threads\n"
                        "checkpoint:\n  every_steps: 0\n  resume: never\n"
                        "finetune:\n  checkpoint: run/checkpoints/latest\n  train: ft-train.jsonl\n"
                        "  val: ft-val.jsonl\n  epochs: 4\n";
  Out r = ptrain_cmd(dir, {"run", cfg, "--set", "run.dir=" + (dir / "run")});
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  const std::string ckpt = dir / "run/checkpoints/latest";
  {
    // train.jsonl and the final status carry the masked-token accuracy, a fraction that grows
    // from chance (1/261) as the model learns.
    std::vector<double> acc;
    for (const std::string& line : read_lines(dir / "run/train.jsonl")) {
      const auto j = nlohmann::json::parse(line);
      if (!j.contains("loss")) continue;
      REQUIRE_MESSAGE(j.contains("accuracy"), line);
      acc.push_back(j.at("accuracy").get<double>());
      CHECK(acc.back() >= 0.0);
      CHECK(acc.back() <= 1.0);
    }
    REQUIRE(acc.size() == 7);  // steps 1 (the first is always logged), 10, 20, ..., 60
    CHECK(acc.back() > acc.front());
    CHECK(acc.back() > 0.05);
    const auto st = nlohmann::json::parse(test::slurp(dir / "run/status.json"));
    CHECK(st.at("accuracy").get<double>() > 0.0);
  }

  r = ptrain_cmd(dir, {"eval", "--checkpoint", ckpt, "--data", dir / "val.tok", "--json"});
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  const auto ev = nlohmann::json::parse(r.out);
  MESSAGE("eval: " << r.out);
  CHECK(ev.at("accuracy").get<double>() > 0.05);  // above chance (1/261) after 60 steps
  CHECK(ev.at("loss").get<double>() < 4.0);        // well below log(261) = 5.56

  r = ptrain_cmd(dir, {"fill-mask", "--checkpoint", ckpt, "--text", "the quick br[MASK]wn fox",
                       "--top-k", "3", "--json"});
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  const auto fm = nlohmann::json::parse(r.out);
  MESSAGE("fill-mask: " << r.out);
  REQUIRE(fm.at("masks").size() == 1);
  const auto& top = fm.at("masks")[0];
  REQUIRE(top.size() == 3);
  double sum = 0;
  for (size_t i = 0; i < top.size(); ++i) {
    sum += top[i].at("probability").get<double>();
    if (i > 0) CHECK(top[i - 1].at("probability").get<double>() >= top[i].at("probability").get<double>());
  }
  CHECK(sum > 0.0);
  CHECK(sum <= 1.0);
  r = ptrain_cmd(dir, {"fill-mask", "--checkpoint", ckpt, "--text", "no mask here"});
  CHECK(r.rc == 2);
  CHECK(r.err.find("[MASK]") != std::string::npos);
  r = ptrain_cmd(dir, {"generate", "--checkpoint", ckpt, "--prompt", "the"});
  CHECK(r.rc == 2);
  CHECK(r.err.find("model.arch bert") != std::string::npos);

  const std::string g = dir / "g.h5";
  r = ptrain_cmd(dir, {"grad", "--checkpoint", ckpt, "--data", dir / "train.tok", "--batch-size",
                       "3", "--out", g});
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  {
    h5::File f = h5::File::open(g);
    const h5::Dataset in = f.open_dataset("inputs"), lab = f.open_dataset("labels");
    CHECK(in.shape() == std::vector<int64_t>{3, 24});
    CHECK(lab.shape() == std::vector<int64_t>{3, 24});
    std::vector<int32_t> ids(72), labels(72);
    in.read(std::span<int32_t>(ids));
    lab.read(std::span<int32_t>(labels));
    int64_t predicted = 0, masked = 0;
    for (size_t i = 0; i < ids.size(); ++i) {
      predicted += labels[i] != -100;
      masked += ids[i] == 260;  // [MASK] = 257 + 3
    }
    CHECK(ids[0] == 258);  // [CLS]
    CHECK(ids[23] == 259);  // [SEP]
    CHECK(predicted >= 3);
    CHECK(masked >= 1);
    CHECK(masked <= predicted);
    CHECK(f.open_dataset("grad/cls.predictions.bias").shape() == std::vector<int64_t>{261});
  }

  r = ptrain_cmd(dir, {"inspect", ckpt, "--json"});
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  CHECK(nlohmann::json::parse(r.out).at("model").at("arch") == "bert");

  // Fine-tuning: which of two phrases a text holds (plus noise words); 3 classes, unbalanced.
  const char* phrases[] = {"the quick brown fox", "jumps over the lazy dog",
                           "parameter servers aggregate"};
  std::ofstream tr(dir / "ft-train.jsonl"), va(dir / "ft-val.jsonl");
  for (int i = 0; i < 150; ++i) {
    const int k = i % 5 < 2 ? 0 : i % 5 < 4 ? 1 : 2;
    const std::string text = std::string(phrases[k]) + " " + std::to_string(i * 7919 % 1000);
    (i % 4 == 0 ? va : tr) << nlohmann::json({{"text", text}, {"label", k}}).dump() << "\n";
  }
  tr.close();
  va.close();
  r = ptrain_cmd(dir, {"finetune", cfg, "--set", "run.dir=" + (dir / "ft"), "--set",
                       "train.batch_size=8", "--set", "optim.lr=0.003", "--json"});
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  MESSAGE("finetune: " << r.out);
  const auto ft = nlohmann::json::parse(r.out);
  CHECK(ft.at("labels").size() == 3);
  CHECK(ft.at("val_accuracy").get<double>() > ft.at("majority_accuracy").get<double>() + 0.2);
  CHECK(read_lines(dir / "ft/finetune.jsonl").size() == 4);

  // The fine-tuned checkpoint: BertForSequenceClassification names, readable by every tool that
  // rebuilds the layout from its config (model.num_labels 3), and its class names.
  CHECK(ft.at("checkpoint").get<std::string>() == dir / "ft/finetuned.h5");
  r = ptrain_cmd(dir, {"inspect", dir / "ft/finetuned.h5", "--json"});
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  const auto ins = nlohmann::json::parse(r.out);
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& t : ins.at("tensors")) {
    if (t.at("group") == "model") shapes[t.at("name")] = t.at("shape").get<std::vector<int64_t>>();
  }
  CHECK(shapes.at("classifier.weight") == std::vector<int64_t>{3, 32});
  CHECK(shapes.at("classifier.bias") == std::vector<int64_t>{3});
  CHECK(shapes.at("bert.pooler.dense.weight") == std::vector<int64_t>{32, 32});
  CHECK(shapes.count("bert.embeddings.word_embeddings.weight") == 1);
  CHECK(shapes.count("cls.predictions.bias") == 0);
  const auto lab = nlohmann::json::parse(test::slurp(dir / "ft/finetuned.labels.json"));
  CHECK(lab.at("num_labels") == 3);
  CHECK(lab.at("id2label").at("0") == "0");
  CHECK(lab.at("id2label").at("2") == "2");
  // A classifier is not a masked-LM model: pretraining and fill-mask refuse it by name.
  r = ptrain_cmd(dir, {"fill-mask", "--checkpoint", dir / "ft/finetuned.h5", "--text", "a [MASK]"});
  CHECK(r.rc != 0);
  r = ptrain_cmd(dir, {"finetune", cfg, "--set", "run.dir=" + (dir / "ft2"), "--set",
                       "finetune.checkpoint=" + (dir / "ft/finetuned.h5")});
  CHECK(r.rc == 3);
  CHECK(r.err.find("model.num_labels") != std::string::npos);
}

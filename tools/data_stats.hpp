// `ptrain data stats DIR`: what a prepared folder holds, from its manifest and the shard headers
// (no token is read): documents, tokens and shards per split, the tokenizer and its hash, and, for a
// window length T, windows per shard and how many epochs a number of steps covers.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace ptrain::tools {

struct DataStatsOptions {
  std::string dir;                  // a prepared folder or its manifest.json
  int64_t seq_len = 0;              // T; 0 = no window counts
  std::optional<int64_t> steps;     // with batch_size: the epochs they cover
  int64_t batch_size = 0;
};

// The statistics as one JSON object (text). Throws IoError / DataError naming the file.
std::string data_stats_json(const DataStatsOptions& o);

// The same for people, one line per split and shard.
std::string data_stats_text(const std::string& json);

}  // namespace ptrain::tools

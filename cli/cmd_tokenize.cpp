// `ptrain tokenize --tokenizer T [--json]`: text on standard input, its ids on standard output (one
// line, space-separated, no <|endoftext|> appended); T is `byte`, a tokenizer.json, a prepared data
// folder or a checkpoint (tools/tokenize.hpp).
#include "cli/commands.hpp"
#include "tools/tokenize.hpp"

#include <iostream>
#include <iterator>
#include <memory>

namespace ptrain::cli {

void add_tokenize_command(CLI::App& app, Action& action) {
  struct Args {
    std::string tokenizer;
    bool json = false;
  };
  auto args = std::make_shared<Args>();
  auto* sub = app.add_subcommand("tokenize", "Print the token ids of the text on standard input");
  sub->add_option("--tokenizer", args->tokenizer,
                  "byte, a tokenizer.json, a prepared data folder or a checkpoint")->required();
  sub->add_flag("--json", args->json, "Print one JSON object {\"ids\", \"tokens\"} on stdout");
  sub->callback([&action, args] {
    action = [args] {
      const auto tok = tools::resolve_tokenizer(args->tokenizer);
      std::ios::sync_with_stdio(false);
      const std::string text((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
      std::cout << tools::tokenize_text(*tok, text, args->json) << std::flush;
      return 0;
    };
  });
}

}  // namespace ptrain::cli

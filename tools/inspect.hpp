// `ptrain inspect`'s work: what a checkpoint holds — step, tokens seen, format version, layout
// hash, provenance, data state, model dimensions, tokenizer, the stored config — and a table of
// its tensors (shape, dtype, mean, std, min, max, L2 norm, NaN/Inf counts; statistics over the
// finite values), on stdout as text or one JSON object. `optimizer` adds the AdamW moments. `diff`
// adds each tensor's relative change ‖A−B‖/‖B‖ against another checkpoint (B), whose layout must
// be the same. The checkpoint is verified like any reader would (CRCs included).
#pragma once

#include <string>

namespace ptrain::tools {

struct InspectOptions {
  std::string ckpt;        // checkpoint .h5 or its directory (A)
  std::string diff;        // "" = no comparison; else another checkpoint (B) of the same layout
  bool json = false;       // one JSON object instead of the text report
  bool optimizer = false;  // also /optimizer/m and /optimizer/v
};

// Prints the report on stdout. Throws IoError / CheckpointError for either checkpoint, and
// CheckpointError ("--diff needs checkpoints of the same layout: ...") before reading any tensor
// when the two layouts differ.
void inspect(const InspectOptions& o);

}  // namespace ptrain::tools

#!/usr/bin/env bash
# The README's main job: installs what is missing, builds, tokenizes the fortunes corpus with a
# byte-level BPE, trains configs/quickstart.yaml (a small GPT, a few minutes on 2 cores; a sample
# at each checkpoint and a summary at the end), then samples three texts from the final checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
./scripts/build.sh --target ptrain   # the binary; the tests are not needed here
PTRAIN=build/cli/ptrain
if [ ! -f data/fortunes/manifest.json ]; then
  $PTRAIN prepare --input /usr/share/games/fortunes --doc-separator % --tokenizer bpe \
    --vocab-size 2048 --val-fraction 0.05 --seed 1 --output data/fortunes
fi
$PTRAIN run configs/quickstart.yaml "$@"
echo "---- three samples from runs/quickstart/checkpoints/latest ----"
$PTRAIN generate --checkpoint runs/quickstart/checkpoints/latest --prompt "Q: What" \
  --num-samples 3 --max-new-tokens 60 --temperature 0.8 --top-k 40 --seed 7

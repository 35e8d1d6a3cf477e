#!/usr/bin/env bash
# The seed paper's experiment (Yao et al., 2410.02247) on an encoder pretrained here, end to end,
# with one command from the repository root:
#
#   deno task experiment:seed            # or: bash recipes/seed-experiment.sh
#
# 1. the corpus (GLUE + commonsense training splits, GCIDE, WordNet; skipped when already built),
# 2. the encoder: recipes/pretrain-roberta-small.yaml (resumes a stopped run; skipped when done),
# 3. the sweep: sweeps/seed-small-encoder.yaml (600 cells; finished cells are skipped, a stopped
#    cell resumes from its checkpoint), in this process (no process start per cell),
# 4. the report: runs/seed-small-encoder/report.{md,tex,csv,html} with the paired effects.
# Every step can be killed and the command rerun: it continues where it stopped.
# Extra arguments go to the sweep (e.g. --shard 0/2 on two machines).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f runs/corpus/manifest.json ]; then
  for f in /usr/share/dictd/gcide.dict.dz /usr/share/wordnet/data.noun; do
    if [ ! -e "$f" ]; then
      echo "seed-experiment: $f is missing; install the text sources: apt-get install dict-gcide wordnet-base" >&2
      exit 1
    fi
  done
  deno task corpus --out runs/corpus --glue ../shared/data/glue --commonsense ../shared/data/commonsense
fi

if [ ! -f runs/pretrain-roberta-small/summary.json ]; then
  # --resume starts from step 0 when the run has no checkpoint yet.
  deno task train --config recipes/pretrain-roberta-small.yaml --resume
fi

deno task sweep sweeps/seed-small-encoder.yaml --in-process "$@"
deno task report runs/seed-small-encoder

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
# 4. the report: bench/results/seed-small-encoder/report.{md,tex,csv,html} with the paired effects,
#    built from the archive of finished cells there (cells/{id}/: summary.json, config.json,
#    metrics.jsonl, sweep-cell.json, adapter/adapter_config.json: a few KB each, committed).
# Every step can be killed and the command rerun: it continues where it stopped. A fresh clone
# that regenerates the encoder gets the archived cells back (skipped by the sweep) only when the
# encoder's SHA-256 equals the one they were trained on (bench/results/seed-small-encoder/
# base-model.sha256); pretraining is deterministic, so on the same kind of machine it does.
# Extra arguments go to the sweep (e.g. --shard 0/2 on two machines); with `report` as the only
# argument the sweep is not run: finished cells are archived and the report rebuilt from them.
set -euo pipefail
cd "$(dirname "$0")/.."

RESULTS=bench/results/seed-small-encoder
SWEEP=runs/seed-small-encoder
MODEL=runs/pretrain-roberta-small/model/model.safetensors

# Copy every finished cell's small files into the archive (atomically per cell; two shards
# archiving the same cell at once leave one copy).
archive() {
  for summary in "$SWEEP"/*/summary.json; do
    [ -f "$summary" ] || continue
    dir="$(dirname "$summary")"
    dest="$RESULTS/cells/$(basename "$dir")"
    [ -f "$dest/summary.json" ] && continue
    tmp="$dest.tmp-$$"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    cp "$dir"/summary.json "$dir"/config.json "$dir"/metrics.jsonl "$tmp/"
    if [ -f "$dir/sweep-cell.json" ]; then cp "$dir/sweep-cell.json" "$tmp/"; fi
    if [ -f "$dir/adapter/adapter_config.json" ]; then
      mkdir -p "$tmp/adapter"
      cp "$dir/adapter/adapter_config.json" "$tmp/adapter/"
    fi
    mv -T "$tmp" "$dest" 2>/dev/null || rm -rf "$tmp"
  done
}

report() {
  deno task report "$RESULTS/cells" --out "$RESULTS"
}

mkdir -p "$RESULTS/cells"
if [ "$*" = "report" ]; then
  archive
  report
  exit 0
fi

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
  # A stopped run resumes from its checkpoint; --resume refuses a folder that does not exist yet.
  resume=()
  if [ -d runs/pretrain-roberta-small ]; then resume=(--resume); fi
  deno task train --config recipes/pretrain-roberta-small.yaml "${resume[@]}"
fi

# Cells archived by an earlier run come back only onto the encoder they were trained on.
have="$(sha256sum "$MODEL" | cut -d' ' -f1)"
mkdir -p "$SWEEP"
if [ -f "$RESULTS/base-model.sha256" ]; then
  want="$(cut -d' ' -f1 "$RESULTS/base-model.sha256")"
  if [ "$have" = "$want" ]; then
    for cell in "$RESULTS"/cells/*/; do
      [ -f "$cell/summary.json" ] || continue
      id="$(basename "$cell")"
      # Into a temporary folder, then renamed: two shards started together both restore, and
      # the one that loses the rename leaves the winner's copy as it is.
      if [ ! -e "$SWEEP/$id" ]; then
        tmp="$(mktemp -d "$SWEEP/.restore-$id.XXXXXX")"
        cp -r "$cell"/. "$tmp/"
        mv -T "$tmp" "$SWEEP/$id" 2>/dev/null || rm -rf "$tmp"
      fi
    done
  else
    echo "seed-experiment: $MODEL (sha256 $have) is not the encoder the archived cells in" \
      "$RESULTS/cells were trained on ($want). Move that archive and base-model.sha256 aside" \
      "(e.g. mv $RESULTS $RESULTS.old) to start a new one, or regenerate the encoder" >&2
    exit 1
  fi
else
  echo "$have  $MODEL" >"$RESULTS/base-model.sha256"
fi

trap archive EXIT
deno task sweep sweeps/seed-small-encoder.yaml --in-process "$@"
archive
report

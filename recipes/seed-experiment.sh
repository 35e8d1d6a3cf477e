#!/usr/bin/env bash
# The seed paper's experiment (Yao et al., 2410.02247) on an encoder pretrained here, end to end,
# with one command from the repository root:
#
#   deno task experiment:seed            # or: bash recipes/seed-experiment.sh
#
# 1. the corpus (GLUE + commonsense training splits, GCIDE, WordNet; skipped when already built),
# 2. the encoder: recipes/pretrain-roberta-small.yaml (resumes a stopped run; skipped when done),
# 3. the sweeps, in this process (no process start per cell; finished cells are skipped, a
#    stopped cell resumes from its checkpoint), in this order:
#    sweeps/seed-small-encoder.yaml (600 cells: the experiment itself),
#    sweeps/seed-small-encoder-lr.yaml (36 cells: claim 2 at lower base rates),
#    sweeps/seed-small-encoder-diagnostics.yaml (12 cells: can this encoder carry SST-2 at all),
# 4. the reports: bench/results/{sweep}/report.{md,tex,csv,html} (with the paired effects), built
#    from the archive of that sweep's finished cells there (cells/{id}/: summary.json,
#    config.json, metrics.jsonl, sweep-cell.json, adapter/adapter_config.json: a few KB each,
#    committed). bench/results/seed-small-encoder.md reads them.
# Every step can be killed and the command rerun: it continues where it stopped. A fresh clone
# that regenerates the encoder gets the archived cells back (skipped by the sweeps) only when the
# encoder's SHA-256 equals the one they were trained on (bench/results/seed-small-encoder/
# base-model.sha256); pretraining is deterministic, so on the same kind of machine it does.
# Extra arguments go to every sweep (e.g. --shard 0/2 on two machines); with `report` as the only
# argument no sweep is run: finished cells are archived and the reports rebuilt from them.
set -euo pipefail
cd "$(dirname "$0")/.."

SWEEPS=(seed-small-encoder seed-small-encoder-lr seed-small-encoder-diagnostics)
SHA_FILE=bench/results/seed-small-encoder/base-model.sha256
MODEL=runs/pretrain-roberta-small/model/model.safetensors

# Copy every finished cell of sweep $1 (runs/$1) into its archive, bench/results/$1/cells
# (atomically per cell; two shards archiving the same cell at once leave one copy).
archive() {
  local name="$1" summary dir dest tmp
  for summary in "runs/$name"/*/summary.json; do
    [ -f "$summary" ] || continue
    dir="$(dirname "$summary")"
    dest="bench/results/$name/cells/$(basename "$dir")"
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

# Put the archived cells of sweep $1 back into runs/$1, so the sweep skips them.
restore() {
  local name="$1" cell id tmp
  mkdir -p "runs/$name"
  for cell in "bench/results/$name/cells"/*/; do
    [ -f "$cell/summary.json" ] || continue
    id="$(basename "$cell")"
    # Into a temporary folder, then renamed: two shards started together both restore, and
    # the one that loses the rename leaves the winner's copy as it is.
    if [ ! -e "runs/$name/$id" ]; then
      tmp="$(mktemp -d "runs/$name/.restore-$id.XXXXXX")"
      cp -r "$cell"/. "$tmp/"
      mv -T "$tmp" "runs/$name/$id" 2>/dev/null || rm -rf "$tmp"
    fi
  done
}

report() {
  local name="$1"
  # A sweep with no finished cell yet has no report.
  compgen -G "bench/results/$name/cells/*/summary.json" >/dev/null || return 0
  deno task report "bench/results/$name/cells" --out "bench/results/$name"
}

archive_all() {
  local name
  for name in "${SWEEPS[@]}"; do archive "$name"; done
}

for name in "${SWEEPS[@]}"; do mkdir -p "bench/results/$name/cells"; done
if [ "$*" = "report" ]; then
  archive_all
  for name in "${SWEEPS[@]}"; do report "$name"; done
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
if [ -f "$SHA_FILE" ]; then
  want="$(cut -d' ' -f1 "$SHA_FILE")"
  if [ "$have" != "$want" ]; then
    echo "seed-experiment: $MODEL (sha256 $have) is not the encoder the archived cells in" \
      "bench/results/seed-small-encoder*/cells were trained on ($want). Move those archives and" \
      "$SHA_FILE aside (e.g. mv bench/results/seed-small-encoder bench/results/seed-small-encoder.old)" \
      "to start new ones, or regenerate the encoder" >&2
    exit 1
  fi
  for name in "${SWEEPS[@]}"; do restore "$name"; done
else
  echo "$have  $MODEL" >"$SHA_FILE"
fi

trap archive_all EXIT
for name in "${SWEEPS[@]}"; do
  deno task sweep "sweeps/$name.yaml" --in-process "$@"
  archive "$name"
  report "$name"
done

#!/usr/bin/env bash
# One-command GPU benchmark: our kernels and training steps, then the PyTorch fp32 eager (+ PEFT)
# peer on the same device, merged into summary.json + summary.md.
#
# usage (from anywhere): bench/gpu/run.sh [--small] [OUTDIR]
#   OUTDIR defaults to $OUT (the device tool's result folder), else bench/results/gpu-<date>.
#   --small shrinks every shape so the run takes about a minute on a software adapter (llvmpipe);
#   run it here before spending device time.
# On the device machine, after ../shared/tools/pack-for-gpu-host.sh made .gpuhost/ here, e.g.:
#   run(command: "bench/gpu/run.sh", carry: [".gpuhost"], timeout_s: 540)
# The script sources .gpuhost/enter.sh when it exists (Deno, its npm cache, the Vulkan loader).
# Each part has its own time limit so the whole run ends within 8 minutes; a part that fails or
# runs out of time is reported and the others still run.
set -uo pipefail
cd "$(dirname "$0")/../.."
small=""
out="${OUT:-}"
for a in "$@"; do
  case "$a" in
    --small) small="--small" ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    -*) echo "bench/gpu/run.sh: unknown flag $a (expected --small or an output folder)" >&2; exit 2 ;;
    *) out="$a" ;;
  esac
done
[ -n "$out" ] || out="bench/results/gpu-$(date -u +%Y%m%d-%H%M%S)"
mkdir -p "$out"
if [ -f .gpuhost/enter.sh ]; then . .gpuhost/enter.sh; fi
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}" NO_COLOR=1 PYTHONUNBUFFERED=1
DENO="${DENO:-deno}"
PYTHON="${PYTHON:-$(command -v python3 || echo /usr/bin/python3)}"
[ -n "$small" ] && [ -x /usr/bin/python3 ] && PYTHON=/usr/bin/python3
limit_ours=300; limit_peer=150
[ -n "$small" ] && { limit_ours=240; limit_peer=120; }
status=0
echo "== ours ($DENO, limit ${limit_ours}s) → $out/ours.json"
timeout "$limit_ours" "$DENO" run -A bench/gpu/run.ts ours --out "$out" $small 2>&1 | tee "$out/ours.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "our part failed or timed out (see $out/ours.log)"; status=1; }
echo "== PyTorch peer ($PYTHON, limit ${limit_peer}s) → $out/peer.json"
timeout "$limit_peer" "$PYTHON" bench/gpu/peer.py --out "$out/peer.json" $small 2>&1 | tee "$out/peer.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "the peer failed or timed out (see $out/peer.log)"; status=1; }
echo "== report → $out/summary.md"
"$DENO" run -A bench/gpu/run.ts report --out "$out" || status=1
exit $status

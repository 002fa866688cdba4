#!/usr/bin/env bash
# The full emulated suite for both ARM architectures on every Raspberry Pi OS release we
# support (Debian bullseye, bookworm, trixie): tools/arm_emulation.sh ARCH RELEASE for each
# pair, the two architectures side by side and the releases one after another, then a
# summary table (date, commit, passed/skipped and why, time) for docs/platforms.md; then the
# wheels: built and smoke-tested, installed as wheels, on the same releases
# (tools/wheels.sh --smoke, its table for docs/wheels.md). What the weekly
# .github/workflows/arm.yml runs, as one command here. About 15 minutes a pair on a 2-core
# machine, longer for a root that must be made first.
#
# Usage (as root):
#   tools/arm_matrix.sh [--arch "arm64 armhf"] [--release "bullseye bookworm trixie"] [-- pytest args]
# Logs stay in $ARM_MATRIX_LOGS (default /var/tmp/pyv-arm-matrix); the table is summary.md there.
set -euo pipefail
cd "$(dirname "$0")/.."

archs="arm64 armhf"
releases="bullseye bookworm trixie"
while (($#)); do
    case "$1" in
        --arch) archs="$2"; shift 2 ;;
        --release) releases="$2"; shift 2 ;;
        --) shift; break ;;
        *) echo "usage: $0 [--arch \"arm64 armhf\"] [--release \"bullseye bookworm trixie\"] [-- pytest args]" >&2; exit 2 ;;
    esac
done
logs="${ARM_MATRIX_LOGS:-/var/tmp/pyv-arm-matrix}"
mkdir -p "$logs"
commit="$(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo +changes)"

# One run, its summary row: pytest's last line (passed, skipped, ...), the skip reasons.
run() {
    local arch="$1" release="$2" started=$SECONDS status=passed result skips
    shift 2
    bash tools/arm_emulation.sh "$arch" "$release" -- "$@" > "$logs/$arch-$release.log" 2>&1 || status=FAILED
    result="$(grep -E '^=+ .*(passed|failed|error).* in [0-9.]+s' "$logs/$arch-$release.log" | tail -n 1 |
        sed -E 's/^=+ //; s/ in [0-9.]+s.*//')"
    skips="$(grep -E '^SKIPPED \[[0-9]+\]' "$logs/$arch-$release.log" | sed -E 's/^SKIPPED \[([0-9]+)\] [^:]+:[0-9]+: /\1: /' |
        sort | uniq -c | awk '{ n = $2; sub(":", "", n); $1 = ""; $2 = ""; sub(/^ +/, ""); printf "%s%s x %s", sep, n, $0; sep = "; " }')"
    echo "| $arch | $release | $(date -u +%F) | $commit | $status: ${result:-no pytest summary} | ${skips:-none} | $(( (SECONDS - started) / 60 )) min $(( (SECONDS - started) % 60 )) s |" > "$logs/$arch-$release.row"
    [[ "$status" == passed ]]
}

failed=()
for release in $releases; do
    declare -A jobs=()
    for arch in $archs; do
        run "$arch" "$release" "$@" &
        jobs[$arch]=$!
    done
    for arch in $archs; do
        wait "${jobs[$arch]}" || failed+=("$arch-$release")
    done
    unset jobs
done
{
    echo "| arch | release | date | commit | result | skipped (count x reason) | time |"
    echo "| --- | --- | --- | --- | --- | --- | --- |"
    for release in $releases; do for arch in $archs; do cat "$logs/$arch-$release.row"; done; done
} > "$logs/summary.md"
cat "$logs/summary.md"
# After the suites, not beside them: one emulated job at a time is what 2 cores carry.
bash tools/wheels.sh --arch "$archs" --smoke "$releases" > "$logs/wheels.log" 2>&1 || failed+=(wheels)
sed -n '/summary (also in/,$p' "$logs/wheels.log"
if ((${#failed[@]})); then
    echo "=== tools/arm_matrix.sh: failed: ${failed[*]} (logs in $logs)" >&2
    exit 1
fi
echo "=== tools/arm_matrix.sh: all passed in $SECONDS s (logs in $logs)"

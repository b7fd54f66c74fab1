#!/usr/bin/env bash
# Runs the whole Rust test suite under every libtorch CPU kernel level and 1 and 2 threads, to
# find tests that hold on one CPU but not another (issue 15). Run it before a release; it prints
# one line per (capability, threads) and a summary of the tests that failed anywhere.
#
#   bash scripts/cpu-sweep.sh                 # every test of the workspace
#   bash scripts/cpu-sweep.sh model train     # only these test files of crates/divrl/tests
#   CPU_SWEEP_CAPS="default avx2" CPU_SWEEP_THREADS="1" bash scripts/cpu-sweep.sh
#
# ATEN_CPU_CAPABILITY picks libtorch's vectorised kernels (default = scalar, avx2, avx512, the
# native level where supported); OMP_NUM_THREADS sets libtorch's intra-op thread count (libtorch
# reads it at start-up; tests that call tch::set_num_threads themselves keep their own count).
# Runs under `nice -n 19` so it can share the machine with experiments.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/env.sh
source scripts/env.sh

tests=("$@")
native="$(python -c 'import torch; print(torch.backends.cpu.get_cpu_capability().lower())')"
caps="${CPU_SWEEP_CAPS:-default avx2 $native}"
threads="${CPU_SWEEP_THREADS:-1 2}"
# De-duplicate (native may be avx2).
caps="$(printf '%s\n' $caps | awk '!seen[$0]++' | tr '\n' ' ')"

test_args=(--workspace)
what="the whole workspace"
if [ ${#tests[@]} -gt 0 ]; then
    test_args=(-p divrl)
    what="crates/divrl/tests: ${tests[*]}"
fi
for t in "${tests[@]}"; do
    test_args+=(--test "$t")
done
nice -n 19 cargo build --release --tests "${test_args[@]}" >/dev/null

log_dir="$(mktemp -d)"
failures=()
echo "native CPU capability: $native; sweeping capabilities [$caps] x threads [$threads] over $what"
for cap in $caps; do
    for t in $threads; do
        log="$log_dir/$cap-$t.log"
        start=$(date +%s)
        if ATEN_CPU_CAPABILITY="$cap" OMP_NUM_THREADS="$t" MKL_NUM_THREADS="$t" \
            nice -n 19 cargo test --release --no-fail-fast "${test_args[@]}" >"$log" 2>&1; then
            status=ok
        else
            status=FAILED
        fi
        passed=$(grep -Eo '[0-9]+ passed' "$log" | awk '{s += $1} END {print s + 0}')
        failed=$(grep -Eo '[0-9]+ failed' "$log" | awk '{s += $1} END {print s + 0}')
        printf '%-8s threads %s: %-6s %3d passed, %d failed (%ds)\n' \
            "$cap" "$t" "$status" "$passed" "$failed" $(($(date +%s) - start))
        while read -r name; do
            failures+=("$name [$cap, $t threads]")
        done < <(grep -E '^    [A-Za-z0-9_:]+$' "$log" | sed 's/^ *//' || true)
        if [ "$status" = FAILED ] && [ "$failed" -eq 0 ]; then
            failures+=("build or harness failure [$cap, $t threads]: see $log")
        fi
    done
done
if [ ${#failures[@]} -eq 0 ]; then
    echo "no test depends on the CPU capability or the thread count"
    rm -rf "$log_dir"
else
    echo "tests that failed somewhere (logs in $log_dir):"
    printf '  %s\n' "${failures[@]}"
    exit 1
fi

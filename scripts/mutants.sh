#!/bin/bash
# Mutation testing with the per-mutant test set of docs/MUTATION.md: the unit tests and the
# in-process integration suites, built alone (`--cargo-arg`), debug info off for short links.
#
#   scripts/mutants.sh OUTDIR FILE... [more cargo-mutants arguments, e.g. --re 'classify']
#
# Needs cargo-mutants 27.1 (`cargo install cargo-mutants --locked --version 27.1.0`). Takes
# 20-60 s a mutant on 2 cores; OUTDIR/mutants.out/{missed,caught,timeout,unviable}.txt hold the
# results.
set -euo pipefail
out=$1
shift
suites=(executor_faults providers_wiremock providers_sim feeder_model feeder_life resolution
    verification keyed_chain certificates)
args=()
for s in "${suites[@]}"; do args+=(--cargo-arg="--test=$s"); done
prev=
for a in "$@"; do
    case $prev:$a in
        --*:*) args+=("$a") ;;  # an option's value, e.g. a --re regex that starts with src/
        *:src/*) args+=(--file "$a") ;;
        *) args+=("$a") ;;
    esac
    prev=$a
done
cd "$(dirname "$0")/.."
CARGO_PROFILE_DEV_DEBUG=0 exec cargo mutants -o "$out" --jobs 2 -E 'doctor|std::fmt::Debug' \
    --cargo-arg=--lib "${args[@]}"

# Recipes for working on runbook. `just ci` is exactly what CI runs.

# List the recipes.
default:
    @just --list

# Run the whole test suite (installs what the tests need when missing).
test:
    ./scripts/test

# What CI runs.
ci:
    bash .ci/run

# Format, lint (clippy pedantic, warnings are errors) and check the schema is up to date.
lint:
    cargo fmt --all -- --check
    cargo clippy --all-targets --locked -- -D warnings

# Regenerate the checked-in JSON Schemas (runbook, drill, triggers) from the Rust types.
schemas:
    UPDATE_SCHEMAS=1 cargo test --quiet --test schema

# Run the self-contained example end to end.
demo:
    cargo run --quiet -- exec runbooks/example.yaml --yes

# Benchmarks, in one go (release build): compile at 5k/10k/25k steps; a chain against a shell
# script and GNU make, journal off and on; the cost of durability; a chatty step; history
# queries at 100,000 runs.
bench:
    cargo bench --bench plan_10k --bench exec_chain --bench durability --bench chatty --bench history

# Fuzz the runbook, drill, cron and triggers parsers and the plan file reader for about
# MINUTES minutes (proptest over arbitrary bytes and mutated real files; no panic, no hang).
fuzz MINUTES="10":
    #!/usr/bin/env bash
    set -euo pipefail
    cargo test --release --test fuzz --no-run
    end=$(( $(date +%s) + {{MINUTES}} * 60 ))
    rounds=0
    while [ "$(date +%s)" -lt "$end" ]; do
        PROPTEST_CASES=${PROPTEST_CASES:-5000} cargo test --release --quiet --test fuzz
        rounds=$((rounds + 1))
    done
    echo "fuzz: ${rounds} rounds of ${PROPTEST_CASES:-5000} cases per target, no panic"

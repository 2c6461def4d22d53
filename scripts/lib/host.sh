# Sourced by the scripts that run drpo-host (demo, outcome). Sets `host` to a current drpo-host
# binary without a second build: the release binary when `./scripts/build` (or install) has made
# one, brought up to date (a no-op when it is), else the debug binary the tests build, built as
# `./scripts/test` builds it (building drpo-host alone resolves the workspace's features
# differently and compiles most dependencies a second time).
if [ -x target/release/drpo-host ]; then
    cargo build --release -p drpo-host
    host=target/release/drpo-host
else
    cargo build --workspace --all-targets
    host=target/debug/drpo-host
fi

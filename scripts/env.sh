# Sourced by the scripts: one cargo target directory outside the clone, shared by the run and
# test commands (one release profile for both), so CI and later checkouts reuse the build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flowers/target}"
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

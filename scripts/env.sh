# Sourced by the scripts: one cargo target directory outside the clone, shared by the run and
# test commands (one release profile for both), so CI and later checkouts reuse the build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flowers/target}"
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
# The Python packages scripts/setup installs (pytest, and NumPy for the example): first on
# PATH, so the tests and the Runs of a Flowers started by these scripts use them.
export FLOWERS_VENV="${FLOWERS_VENV:-$HOME/.cache/flowers/venv}"
export PATH="$FLOWERS_VENV/bin:$PATH"

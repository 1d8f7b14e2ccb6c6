# Shared by the fixture tools' generate.sh scripts (sourced, not run): the pinned virtual
# environment each tool's Python reference runs in, and the Rust test that writes the tiny
# checkpoints the reference reads. CI never runs these; they regenerate committed fixtures.
#
# Environment read here:
#   PYTHON            interpreter for a new virtual environment (default: python3, tested 3.11)
#   TORCH_INDEX_URL   optional extra wheel index to take torch from first (a CPU-only build)
#   CARGO_TARGET_DIR  cargo's target dir (default: $HOME/.cache/horde-target)
#   CARGO_LOCK        lock file serialising cargo runs (default: /tmp/horde-cargo.lock)

# ensure_venv VENV REQUIREMENTS NAME: creates VENV if missing and installs REQUIREMENTS into it
# when they changed since the last install (a stamp named after the tool NAME records them).
ensure_venv() {
    local venv="$1" requirements="$2" name="$3"
    local stamp="$venv/.horde-$name-requirements"
    if [ ! -x "$venv/bin/python" ]; then
        echo "creating virtual environment in $venv" >&2
        mkdir -p "$(dirname "$venv")"
        "${PYTHON:-python3}" -m venv "$venv"
    fi
    if ! cmp -s "$requirements" "$stamp"; then
        if [ -n "${TORCH_INDEX_URL:-}" ]; then
            local torch_version
            torch_version="$(sed -n 's/^torch==//p' "$requirements")"
            "$venv/bin/pip" install --index-url "$TORCH_INDEX_URL" "torch==$torch_version"
        fi
        "$venv/bin/pip" install -r "$requirements"
        cp "$requirements" "$stamp"
    fi
}

# run_writer VARIABLE DIR TEST_FILE TEST: runs the ignored Rust test TEST of horde-diffusion's
# tests/TEST_FILE.rs, which writes its checkpoints into DIR (passed in VARIABLE), under the
# cargo lock, from the repository root.
run_writer() {
    local variable="$1" dir="$2" test_file="$3" test="$4"
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/horde-target}"
    env "$variable=$dir" flock "${CARGO_LOCK:-/tmp/horde-cargo.lock}" \
        cargo test -p horde-diffusion --test "$test_file" "$test" -- --ignored --exact --nocapture
}

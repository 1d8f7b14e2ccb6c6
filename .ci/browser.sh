#!/usr/bin/env bash
# What the browser test of the dashboard (crates/horde/tests/api/browser.rs) needs: Debian's
# chromium (installed by .ci/run with the other Debian packages when missing) and the pinned
# playwright-core from npm, installed from package-lock.json into
# crates/horde/tests/browser/node_modules (ignored by git). Playwright's own browser download
# is never used: the test launches /usr/bin/chromium.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v chromium >/dev/null || { echo "chromium is missing: apt-get install chromium" >&2; exit 1; }
command -v npm >/dev/null || { echo "npm is missing: apt-get install nodejs npm" >&2; exit 1; }
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix crates/horde/tests/browser \
    --no-audit --no-fund --loglevel=error >&2
echo "$(chromium --version 2>/dev/null | head -n 1), playwright-core $(node -p 'require("./crates/horde/tests/browser/node_modules/playwright-core/package.json").version')"

#!/bin/sh
# Best-effort install of the Debian packages some tests use when present, so a fresh machine (and CI, which
# runs as root) exercises them: python3-h2 (an HBONE interop client in another language), haproxy and
# nginx (the benchmark's peers, via bench/setup.sh). Never fails `npm test`: a test whose tool is missing
# says so and skips, or marks its row skipped.
set -u
cd "$(dirname "$0")/.."
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "scripts/test-deps.sh: not root or no apt-get; tests needing python3-h2, haproxy or nginx skip when those are absent"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! python3 -c 'import h2' >/dev/null 2>&1 && ! /usr/bin/python3 -c 'import h2' >/dev/null 2>&1; then
  echo "scripts/test-deps.sh: installing python3-h2"
  apt-get update -qq >/dev/null 2>&1 || true
  apt-get install -y -qq --no-install-recommends python3-h2 >/dev/null 2>&1 || echo "scripts/test-deps.sh: python3-h2 could not be installed; the Python interop test will skip"
fi
sh bench/setup.sh || echo "scripts/test-deps.sh: bench peers not installed; their benchmark rows will be marked skipped"
exit 0

#!/usr/bin/env bash
# System packages the integration tests need, installed on a fresh Debian machine where we can
# (called by `make test`). Python packages come from pyproject's [test] extra; model wheels and
# shared data are set up by `make setup`. Says plainly what it could not install: under CI=true
# the test that needs it then fails (tests/skip_allowlist.txt), it does not skip silently.
set -uo pipefail

need_apt=()
[ -x "${CXR_CHROMIUM:-/usr/bin/chromium}" ] || need_apt+=(chromium)
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  need_apt+=(postgresql)
fi
[ ${#need_apt[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "install_test_deps: apt-get install ${need_apt[*]} (browser and database tests)"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q "${need_apt[@]}" >/tmp/cxr-apt.log 2>&1; then
    apt-get update -q >>/tmp/cxr-apt.log 2>&1 && apt-get install -y -q "${need_apt[@]}" >>/tmp/cxr-apt.log 2>&1 \
      || { echo "install_test_deps: apt-get failed (log: /tmp/cxr-apt.log); tests needing ${need_apt[*]} will not run"; exit 0; }
  fi
  echo "install_test_deps: installed ${need_apt[*]}"
else
  echo "install_test_deps: cannot install ${need_apt[*]} (needs root and apt-get);" \
       "install them yourself (Debian: apt-get install ${need_apt[*]}) or the tests that need them skip (fail under CI=true)"
fi

#!/usr/bin/env bash
# What `make test` needs beyond pip: a real redis-server (the job store's and
# cache's shared backend is tested against one) and Debian's chromium (the web
# page's browser test drives it through Playwright; no browser download).
# Installs them with apt-get where that is possible (root, Debian/Ubuntu);
# otherwise stops at once, naming what to install.
set -euo pipefail
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "make test: installing ${missing[*]} with apt-get" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  exit 0
fi
cat >&2 <<MSG
make test needs ${missing[*]}, which pip cannot install, and this shell cannot apt-get them.
Install them, then run make test again:
    sudo apt-get install -y ${missing[*]}
(redis-server: the tests start their own on free ports; chromium: /usr/bin/chromium drives the web page's test.)
MSG
exit 1

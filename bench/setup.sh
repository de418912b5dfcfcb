#!/bin/sh
# Installs the benchmark's peers from Debian's packages when they are absent: haproxy (the L4/L7 pairs
# ambit is compared with) and nginx (the upstream every row shares; a small Node server stands in
# without it). Safe to run again: present tools are left alone. A peer that cannot be installed is
# reported, and `npm run bench` then marks its rows skipped with the reason.
set -u

need=""
command -v haproxy >/dev/null 2>&1 || need="$need haproxy"
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need="$need nginx"
if [ -z "$need" ]; then
  echo "bench/setup.sh: haproxy and nginx already installed"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "bench/setup.sh: apt-get not found; install$need yourself" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "bench/setup.sh: not root and no passwordless sudo; cannot install$need" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
echo "bench/setup.sh: installing$need from Debian's packages"
$SUDO apt-get update -qq || echo "bench/setup.sh: apt-get update failed; trying the cached package lists" >&2
status=0
for package in $need; do
  case "$package" in
    haproxy) $SUDO apt-get install -y -qq --no-install-recommends haproxy >/dev/null || status=1 ;;
    # nginx-light is the smallest build that has everything the upstream needs (return, keepalive).
    nginx) $SUDO apt-get install -y -qq --no-install-recommends nginx-light >/dev/null \
             || $SUDO apt-get install -y -qq --no-install-recommends nginx >/dev/null || status=1 ;;
  esac
done
# The packages start system services on install; the bench runs its own instances on 127.70.x.y.
for service in haproxy nginx; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$service" 2>/dev/null; then $SUDO systemctl stop "$service" || true; fi
  if command -v service >/dev/null 2>&1; then $SUDO service "$service" stop >/dev/null 2>&1 || true; fi
done
command -v haproxy >/dev/null 2>&1 && echo "bench/setup.sh: $(haproxy -v | head -1)"
if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then echo "bench/setup.sh: $( (nginx -v || /usr/sbin/nginx -v) 2>&1)"; fi
exit $status

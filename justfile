# TaskMaster tasks. `just --list` shows them.

set shell := ["bash", "-euo", "pipefail", "-c"]
# Variables are evaluated when a recipe uses them: COMPOSE runs commands to decide.
set lazy

venv := justfile_directory() / ".venv"
python := venv / "bin" / "python"

# The compose command: the first of these whose `version` runs (not `command -v`: podman 4.3,
# Debian 12's, has no `podman compose`; `just install` puts podman-compose in .venv).
# Choose one with `just COMPOSE="docker compose" up`.
COMPOSE := shell('''
    for c in "podman compose" podman-compose "$1/podman-compose" "docker compose" docker-compose; do
        if $c version >/dev/null 2>&1; then echo "$c"; exit 0; fi
    done
    echo none
''', venv / "bin")
# The engine behind COMPOSE, and the compose project (compose.yaml's `name:`).
ENGINE := if COMPOSE =~ '^docker' { "docker" } else { "podman" }
PROJECT := env("COMPOSE_PROJECT_NAME", "taskmaster")

# List the recipes.
default:
    @just --list

# Create .venv and install TaskMaster with its dev tools (skipped when up to date).
install:
    #!/usr/bin/env bash
    set -euo pipefail
    stamp={{venv}}/.installed
    if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then exit 0; fi
    test -x {{python}} || python3 -m venv {{venv}}
    {{python}} -m pip install -q --upgrade pip
    {{python}} -m pip install -q -e '.[dev]'
    touch "$stamp"

# ruff and mypy on tm/ (generated code excluded).
lint: install
    {{venv}}/bin/ruff check tm tests
    {{venv}}/bin/mypy

# Uses TM_TEST_DATABASE_URL, else starts a throwaway PostgreSQL from the machine's binaries.
# Lint, then the whole test suite (unit, integration, e2e; not the container test below).
test *args: lint
    {{python}} -m pytest {{args}}

# Unit tests only (no database).
test-unit *args: install
    {{python}} -m pytest tests/unit {{args}}

# The compose cluster for real (minutes): `just up`, tasks, a worker crash, a coordinator
# restart, `just down` + `just up`. .ci/containers/prepare.sh installs podman first where it
# can (root, apt); where no engine can run, the test is skipped and says why.
test-containers *args: install
    .ci/containers/prepare.sh || [ $? -eq 77 ]
    TM_TEST_CONTAINERS=1 {{python}} -m pytest tests/containers {{args}}

# Regenerate tm/proto/gen from tm/proto/taskmaster.proto.
proto: install
    rm -rf tm/proto/gen && mkdir -p tm/proto/gen
    PATH={{venv}}/bin:$PATH {{python}} -m grpc_tools.protoc -I tm/proto \
        --python_betterproto2_out=tm/proto/gen \
        --python_betterproto2_opt=client_generation=async,server_generation=async \
        tm/proto/taskmaster.proto

# Everything on this machine in one process: scheduler, coordinator, workers.
dev *args: install
    {{venv}}/bin/tm dev {{args}}

# Start the compose cluster (PostgreSQL, migrate, scheduler, coordinator, workers), building
# the image once. BUILDAH_FORMAT=docker: podman keeps the image's HEALTHCHECK.
up workers="3": _compose
    BUILDAH_FORMAT=docker TM_WORKERS={{trim_start_match(workers, "workers=")}} \
        {{COMPOSE}} up -d --build --scale worker={{trim_start_match(workers, "workers=")}}

# Stop the compose cluster, data volume kept: workers first (their last reports reach the
# coordinator), then scheduler and coordinator, then the rest, scaled replicas included.
down: _compose
    #!/usr/bin/env bash
    set -euo pipefail
    mine="--filter label=com.docker.compose.project={{PROJECT}}"
    all=$({{ENGINE}} ps -aq $mine | wc -l) || all=0
    # podman-compose knows only the replicas TM_WORKERS names: count the ones there are.
    n=$({{ENGINE}} ps -aq $mine --filter label=com.docker.compose.service=worker | wc -l) || n=0
    if [ "$n" -gt 0 ]; then export TM_WORKERS=$n; {{COMPOSE}} stop worker; fi
    if [ "$all" -gt 0 ]; then {{COMPOSE}} stop scheduler coordinator; fi
    {{COMPOSE}} down --remove-orphans

[private]
_compose:
    #!/usr/bin/env bash
    if [ "{{COMPOSE}}" = none ]; then
        echo "no compose command runs here; install one of:" >&2
        echo "  podman >= 4.7 with podman-compose or docker-compose (podman compose)" >&2
        echo "  podman 4.3 with podman-compose (pip install podman-compose; just install has it)" >&2
        echo "  docker with its compose plugin (docker compose)" >&2
        exit 1
    fi

# TaskMaster tasks. `just --list` shows them.

set shell := ["bash", "-euo", "pipefail", "-c"]

venv := justfile_directory() / ".venv"
python := venv / "bin" / "python"
# podman first, then docker; override with `just COMPOSE="docker compose" up`.
COMPOSE := `if command -v podman >/dev/null 2>&1; then echo "podman compose"; elif command -v podman-compose >/dev/null 2>&1; then echo podman-compose; else echo "docker compose"; fi`

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
# Lint, then the whole test suite (unit, integration, e2e).
test *args: lint
    {{python}} -m pytest {{args}}

# Unit tests only (no database).
test-unit *args: install
    {{python}} -m pytest tests/unit {{args}}

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

# Start the compose cluster (PostgreSQL, migrate, scheduler, coordinator, workers).
up workers="3":
    {{COMPOSE}} up -d --build --scale worker={{trim_start_match(workers, "workers=")}}

# Stop the compose cluster (data volume kept).
down:
    {{COMPOSE}} down

# Two commands: `make run` serves http://localhost:8787 (make run PORT=8799, or PORT in .env, for
# another port), `make test` runs every check. `make bench` runs the benchmark (bench/README.md);
# BENCH_ARGS="--quick" for a short run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: run test lint format node bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# PORT comes from `make run PORT=...`, the environment (make passes both on) or .env, as the
# settings read it (default 8787); PUBLIC_URL follows it unless set. `serve` prints "Serving on
# ..." once the port is bound, and --reload restarts it when a .py file or a template changes.
run: $(STAMP)
	@$(BIN)/python manage.py migrate --noinput --verbosity 0
	@echo "Database migrations: up to date."
	@$(BIN)/python manage.py ensure_local_user
	@$(BIN)/python manage.py serve -b 127.0.0.1 --reload

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch node_modules/.installed

node: node_modules/.installed

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: $(STAMP) node lint
	$(BIN)/python manage.py check
	$(BIN)/python manage.py makemigrations --check --dry-run
	$(BIN)/pytest $(PYTEST_ARGS)

$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	touch $(BENCH_STAMP)

# Not part of `make test`: it takes ~10 minutes and wants a quiet machine (bench/README.md).
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) node_modules .pytest_cache .ruff_cache

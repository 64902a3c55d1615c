# switchd: `make run` serves on the embedded queue; `make test` runs the full suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STATE := .state
CHROMIUM := /usr/bin/chromium
REDIS := /usr/bin/redis-server
# The real Faktory of the tests and benchmarks, where it exists (it is no part of switchd).
FAKTORY := $(wildcard ../shared/bin/faktory)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run sink test bench lint format clean screenshots

# The package and what `switchd serve` needs; the test extras (pytest, ruff, playwright,
# ...) only for the targets that use them.
$(BIN)/switchd: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.test-extras: $(BIN)/switchd
	$(BIN)/pip install -q -e '.[test]'
	touch $@

$(STATE)/dev-secret $(STATE)/dev-admin-secret:
	mkdir -p $(STATE)
	$(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(48))' > $@
	chmod 600 $@

run: $(BIN)/switchd $(STATE)/dev-secret $(STATE)/dev-admin-secret
	SWITCH_JWT_SECRET="$${SWITCH_JWT_SECRET:-$$(cat $(STATE)/dev-secret)}" \
	SWITCH_ADMIN_JWT_SECRET="$${SWITCH_ADMIN_JWT_SECRET:-$$(cat $(STATE)/dev-admin-secret)}" \
	SWITCH_DB_NAME="$${SWITCH_DB_NAME:-$(STATE)/switch.db}" \
	$(BIN)/switchd serve

sink: $(BIN)/switchd
	$(BIN)/python bench/sink.py --port 9000

# The console's browser tests drive Debian's chromium (Playwright downloads no browser).
$(CHROMIUM):
	$(SUDO) apt-get update -q
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium

# That Faktory runs its own redis-server child. Debian's package starts a system service
# where its policy allows (/etc/init.d, pid in /run/redis): stopped at once, by its pid.
$(REDIS):
	$(SUDO) apt-get update -q
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q redis-server
	if [ -d /run/systemd/system ]; then $(SUDO) systemctl disable --now redis-server; \
	elif [ -s /run/redis/redis-server.pid ]; then \
		$(SUDO) kill "$$(cat /run/redis/redis-server.pid)"; fi

test: $(VENV)/.test-extras $(CHROMIUM) $(if $(FAKTORY),$(REDIS))
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

screenshots: $(VENV)/.test-extras $(CHROMIUM)
	$(BIN)/python tools/screenshots.py docs/console

bench: $(BIN)/switchd $(if $(FAKTORY),$(REDIS))
	$(BIN)/python bench/run.py

lint: $(VENV)/.test-extras
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.test-extras
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache

# dispatcher: `make run` starts the daemon on its embedded Redis, `make test` runs the tests.
# Both set everything up on a fresh Debian machine with Python 3.11: a .venv with the package
# in editable mode, and redis-server from the system packages when it is missing.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= etc/dispatcher.toml

.PHONY: run test test-fast test-faults test-model soak stress-fifo lint bench bench-quick bench-shards bench-regions bench-deps redis-server chromium systemd-analyze screenshots clean

# The daemon for trying it out: an admin token in var/admin.token (unless DISPATCHER_ADMIN_TOKEN
# is set) and targets on this machine allowed; see scripts/run-dev.
run: $(STAMP) redis-server
	BIN=$(BIN) CONFIG=$(CONFIG) $(BIN)/python scripts/run-dev

# The suite runs on TEST_WORKERS pytest-xdist workers, each with a redis-server of its own, then
# the few tests marked `alone` (they assert measured latencies) with nothing beside them.
# On an existing Redis (REDIS_URL) it runs in one process: some tests change the server's config.
TEST_WORKERS ?= $(if $(REDIS_URL),0,2)

test: $(STAMP) redis-server chromium systemd-analyze lint
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup -m "not alone"
	$(BIN)/pytest -m alone

test-fast: $(STAMP) redis-server chromium systemd-analyze
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup -m "not slow and not alone"
	$(BIN)/pytest -m "alone and not slow" || test $$? -eq 5  # 5: none selected

# The fault suite at full length (make test runs it short): prints the accounting table and
# writes tests/faults/results/latest.{md,json}; fails on any lost, unexpected or stuck event.
test-faults: $(STAMP) redis-server
	FAULTS_FULL=1 $(BIN)/pytest tests/faults

# The queue's model tests at length (make test runs them short and seeded): MODEL_EXAMPLES
# random interleavings of MODEL_STEPS steps each, checked against a plain Python model.
test-model: $(STAMP) redis-server
	MODEL_EXAMPLES=$${MODEL_EXAMPLES:-5000} $(BIN)/pytest tests/test_model.py tests/test_model_traffic.py -p no:cacheprovider -s

# A seeded random-fault soak (5 minutes; FAULTS_SOAK_S, FAULTS_SOAK_SEED), not part of CI.
soak: $(STAMP) redis-server
	FAULTS_SOAK=1 $(BIN)/pytest tests/faults/test_soak.py -s

# Two daemons, 16 FIFO lanes, 20% failures and one process frozen past the stall timeout
# (FIFO_EVENTS events); not part of CI: see tests/test_fifo_sigstop.py for its known window.
stress-fifo: $(STAMP) redis-server
	FAULTS_SOAK=1 $(BIN)/pytest tests/test_fifo_sigstop.py -m soak

# The README's panel screenshots, docs/panel/*.png, from a seeded demo (a daemon on its own
# redis-server and a local target); not part of make test.
screenshots: $(STAMP) redis-server chromium
	$(BIN)/python scripts/screenshots

lint: $(STAMP)
	$(BIN)/ruff check dispatcher tests
	$(BIN)/mypy dispatcher tests

# The benchmark compares dispatcher with BullMQ (npm), arq and saq (PyPI) in one run (about
# 30 minutes) and closes with issue 17's targets, each met or missed (bench/results/latest-full.md).
bench: bench-deps
	$(BIN)/python -m bench.run

# Every scenario but the slow ones, small (under two minutes): does the harness work?
bench-quick: bench-deps
	$(BIN)/python -m bench.run --quick

# Queue sharding: 1 shard on one Redis node against 3 shards on a 3-primary cluster (dispatcher only).
bench-shards: $(STAMP) redis-server
	$(BIN)/python -m bench.shards

# Regions: one central deployment against a Redis and daemon per region, with 40 ms each way
# injected between regions by TCP proxies (tests/delay_proxy.py); about 5 minutes.
bench-regions: $(STAMP) redis-server
	$(BIN)/python -m bench.regions

bench-deps: $(STAMP) redis-server
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	@test -x bench/.venv-peers/bin/python || $(PYTHON) -m venv bench/.venv-peers
	bench/.venv-peers/bin/python -m pip install --quiet -r bench/requirements-peers.txt
	@command -v npm >/dev/null 2>&1 || { echo "npm is missing: install Node.js 20 (Debian: apt-get install nodejs npm) to benchmark BullMQ"; exit 1; }
	cd bench/node && npm ci --silent --no-audit --no-fund

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found: install Python 3.11 (Debian: apt-get install python3.11 python3.11-venv) or run make PYTHON=python3"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { echo "could not create $(VENV): install the venv module (Debian: apt-get install python3.11-venv)"; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# redis-server comes from the system packages; we install it only when we may (root).
redis-server:
	@command -v redis-server >/dev/null 2>&1 || test -x /usr/bin/redis-server || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing redis-server from the Debian packages"; \
	    (apt-get install -y -qq redis-server >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq redis-server; }) \
	      || { echo "apt-get could not install redis-server"; exit 1; }; \
	  else \
	    echo "redis-server is missing: install it (Debian/Ubuntu: sudo apt-get install redis-server)"; \
	    echo "or point the tests at a running Redis with REDIS_URL=redis://host:6379/0"; \
	    exit 1; \
	  fi; }

# Chromium and its driver (one Debian source package, so their versions match) run the panel's
# browser tests (tests/ui) and make its screenshots; installed only when we may (root), without
# the recommended packages (those would pull in and upgrade systemd and perl).
chromium:
	@{ command -v chromium && command -v chromedriver; } >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium and chromium-driver from the Debian packages"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    (apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null 2>&1 \
	      || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver; }) \
	      || { echo "apt-get could not install chromium chromium-driver"; exit 1; }; \
	  else \
	    echo "chromium or chromedriver is missing: install them (Debian: sudo apt-get install --no-install-recommends chromium chromium-driver)"; \
	    exit 1; \
	  fi; }

# The unit files are checked with systemd-analyze verify (Debian package systemd).
systemd-analyze:
	@command -v systemd-analyze >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing systemd (for systemd-analyze) from the Debian packages"; \
	    (apt-get install -y -qq systemd >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq systemd; }) \
	      || { echo "apt-get could not install systemd"; exit 1; }; \
	  else \
	    echo "systemd-analyze is missing: install it (Debian/Ubuntu: sudo apt-get install systemd)"; \
	    exit 1; \
	  fi; }

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache

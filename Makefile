# Two promises (README.md): `make run` and `make test` work on a fresh machine with Python 3.11.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ASX_SAMPLE ?= ../shared/data/asx-sample
export K2_HOME ?= $(CURDIR)/.k2

.PHONY: setup run test lint bench faults clean

$(BIN)/k2: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/k2

# s3rver (npm) is the local S3 endpoint of the object-storage tests (tests/s3.py)
S3RVER := .k2-tools/node_modules/s3rver/package.json
$(S3RVER):
	npm install --prefix .k2-tools --no-save --no-audit --no-fund s3rver@3.7.1

setup: $(BIN)/k2

run: setup
	$(BIN)/k2 load asx $(ASX_SAMPLE)
	$(BIN)/k2 sql "SELECT symbol, count(*) AS trades, min(price) AS low, max(price) AS high, \
	  min(timestamp) AS first_utc, max(timestamp) AS last_utc FROM market_data.trades_v2 GROUP BY symbol ORDER BY symbol"

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

test: setup lint $(S3RVER)
	# Debian packages the tests drive: headless Chromium (dashboard), Prometheus and promtool (alerts, scrape)
	command -v chromium >/dev/null && command -v promtool >/dev/null || (apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium prometheus)
	# a JDK and Maven for Apache Kafka (src/k2/bus/apache_kafka.py fetches its jars once with Maven)
	command -v java >/dev/null && command -v mvn >/dev/null || (apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jdk-headless maven)
	$(BIN)/pytest -q -ra -m "not faults and not apache_kafka"
	# kill -9 drills over a million messages each (tests/faults, ~6 min, plus the 3-broker Apache Kafka drill, budget
	# 8 min); -s prints each drill's figures
	$(BIN)/pytest -q -ra -s -m faults
	# the integration suite again on a PostgreSQL SQL catalog and an S3 warehouse (s3rver on 127.0.0.1), both throwaway
	K2_TEST_CATALOG=postgres K2_TEST_WAREHOUSE=s3 $(BIN)/pytest -q -ra -m integration
	# the integration suite again on one Apache Kafka broker, with the tests that start Kafka themselves (3-node too;
	# the 3-broker kill -9 drill is also `apache_kafka` but ran above with the other drills)
	K2_TEST_BROKER=apache_kafka $(BIN)/pytest -q -ra -m "(integration or apache_kafka) and not faults"

# the kill -9 drills alone (also part of `make test`); K2_FAULT_SEED replays a run, K2_FAULT_MESSAGES resizes it
faults: setup
	$(BIN)/pytest -q -ra -s -m faults

clean:
	rm -rf $(VENV) .k2 .k2-tools .pytest_cache .ruff_cache

# Benchmarks (bench/README.md): the `bench` extra adds the baselines (cryptofeed, ArcticDB) and psutil.
.PHONY: bench-quick
$(VENV)/.bench-deps: pyproject.toml | setup
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@

# full suite, one table (~15 min; the first run also writes a 10 M-trade lake and its ArcticDB copy under /tmp)
bench: $(VENV)/.bench-deps
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# the same rows on smaller sizes with single runs: about a minute
bench-quick: $(VENV)/.bench-deps
	$(BIN)/python bench/run.py --quick $(BENCH_ARGS)

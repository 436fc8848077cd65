# Two promises (README.md): `make run` and `make test` work on a fresh machine with Python 3.11.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# the ASX sample shipped in the repository (data/samples/README.md: sources and licences)
ASX_SAMPLE ?= data/samples/asx
export K2_HOME ?= $(CURDIR)/.k2

.PHONY: setup run test lint bench faults clean system-packages

$(BIN)/k2: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/k2

# s3rver (npm) is the local S3 endpoint of the object-storage tests (tests/s3.py)
S3RVER := .k2-tools/node_modules/s3rver/package.json
$(S3RVER): | system-packages
	npm install --prefix .k2-tools --no-save --no-audit --no-fund s3rver@3.7.1

setup: $(BIN)/k2

# The `spark` extra (pyspark, ~430 MB) only for tests/spark, not in setup: `make run` stays lean. Spark needs Java 17;
# Maven fetches the Iceberg runtime and PostgreSQL JDBC jars once into ~/.cache/k2/jars (k2.lake.engines).
$(VENV)/.spark-deps: pyproject.toml | setup system-packages
	$(BIN)/pip install --quiet -e '.[dev,spark]'
	touch $@

run: setup
	$(BIN)/k2 load asx $(ASX_SAMPLE)
	$(BIN)/k2 sql "SELECT symbol, count(*) AS trades, min(price) AS low, max(price) AS high, \
	  min(timestamp) AS first_utc, max(timestamp) AS last_utc FROM market_data.trades_v2 GROUP BY symbol ORDER BY symbol"

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	# the layers of docs/architecture.md, and no import cycle (contracts in pyproject.toml, [tool.importlinter])
	$(BIN)/lint-imports

# Debian packages the tests drive, installed where missing: headless Chromium (dashboard, /docs), Prometheus and
# promtool (alerts, scrape), PostgreSQL's server binaries (the PostgreSQL-catalog run), Node.js and npm (s3rver),
# Java 17 and Maven (Apache Kafka, Spark and the jars Maven fetches for them).
system-packages:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v node >/dev/null || missing="$$missing nodejs"; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	command -v java >/dev/null || missing="$$missing openjdk-17-jre-headless"; \
	command -v mvn >/dev/null || missing="$$missing maven"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/tmp/k2-apt.log 2>&1 \
	    || { tail -n 20 /tmp/k2-apt.log; exit 1; }; \
	fi

test: setup lint system-packages $(S3RVER) $(VENV)/.spark-deps
	$(BIN)/pytest -q -ra --durations=15 -m "not faults and not spark and not apache_kafka"
	# Spark (one local JVM) reads K2's tables over REST and JDBC, prunes, commits; K2 goes on exactly once (~3 min)
	$(BIN)/pytest -q -ra --durations=15 -m spark
	# kill -9 drills over a million messages each, the 3-broker Apache Kafka drill among them (~13 min on 2 cores;
	# that drill ~3 min); -s prints each drill's figures
	$(BIN)/pytest -q -ra --durations=15 -s -m faults
	# the integration suite again on a PostgreSQL SQL catalog and an S3 warehouse (s3rver on 127.0.0.1), both throwaway
	K2_TEST_CATALOG=postgres K2_TEST_WAREHOUSE=s3 $(BIN)/pytest -q -ra --durations=15 -m integration
	# the integration suite again on one Apache Kafka broker, with the tests that start Kafka themselves (3-node too)
	K2_TEST_BROKER=apache_kafka $(BIN)/pytest -q -ra --durations=15 -m "(integration or apache_kafka) and not faults and not spark"

# the kill -9 drills alone (also part of `make test`); K2_FAULT_SEED replays a run, K2_FAULT_MESSAGES resizes it
faults: setup
	$(BIN)/pytest -q -ra --durations=15 -s -m faults

clean:
	rm -rf $(VENV) .k2 .k2-tools .pytest_cache .ruff_cache .import_linter_cache

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

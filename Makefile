# callrec developer commands. Every target works on a fresh machine: it creates
# the virtual environment and installs what it needs first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TOOLS_STAMP := tools/node_modules/.installed
NODE_STAMP := clients/node/node_modules/.installed
# Debian packages the server needs at run time: the font of the names in mp4 recordings, and LAME
# (3.5-4x less CPU per mp3 than the copy in PyAV's wheel, which stays the fallback)
RUN_APT_PACKAGES := fonts-noto-cjk libmp3lame0
# cluster mode's engines, started by the tests on loopback (SPEC §8): PostgreSQL, Redis, HAProxy
CLUSTER_APT_PACKAGES := postgresql redis-server haproxy
APT_PACKAGES := $(RUN_APT_PACKAGES) $(CLUSTER_APT_PACKAGES) espeak-ng sox fonts-dejavu-core ffmpeg gcc
# the media path mypyc compiles (callrec/compiled.py MODULES): rebuilt when one of them changes
COMPILED_SOURCES := $(addprefix server/callrec/,core/jitter.py core/timeline.py core/clock.py core/mixer.py \
  core/call_media.py core/call_hub.py media/decode_pool.py media/pipe_channel.py compiled.py)
COMPILED_STAMP := server/callrec/_compiled.json
# `make test` runs the suite in two pytest-xdist processes, a test file to a process (its module fixtures start
# once): the tests mostly wait on the servers they start. `make test PARALLEL=` runs it in one process.
PARALLEL ?= -n 2 --dist loadfile

.PHONY: lock run run-deps test test-slow test-deps proto lint bench soak cluster clean apt-deps apt-install compile

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]' -c constraints.txt
	touch $@

## lock: rewrite constraints.txt (the locked test environment) from .venv, after upgrading on purpose
lock: $(STAMP)
	{ sed -n '/^#/p' constraints.txt; $(BIN)/pip freeze --all --exclude-editable | grep -v -E '^(callrec|pip)([=@ ]|$$)'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

## compile: build the media path with mypyc (needs a C compiler; without one the server runs interpreted,
## with a warning at start-up). `make run`, `make test` and `make bench` run it first.
compile: $(COMPILED_STAMP)

$(COMPILED_STAMP): $(STAMP) $(COMPILED_SOURCES) tools/build_native.py
	$(BIN)/python tools/build_native.py $(if $(REQUIRE_COMPILED),--require)

## run: start the server on 127.0.0.1:50051 with SQLite + local storage under ./data
run: $(STAMP) run-deps compile
	$(BIN)/callrec serve --listen 127.0.0.1:50051 --data-dir ./data

$(TOOLS_STAMP): tools/package.json
	cd tools && npm install --no-audit --no-fund --loglevel=error
	touch $@

$(NODE_STAMP): clients/node/package.json
	cd clients/node && npm install --no-audit --no-fund --loglevel=error
	touch $@

## run-deps: Debian packages the server uses (the CJK font, LAME); without them it still serves,
## with a fallback font (and a warning at start-up) and PyAV's slower copy of LAME
run-deps:
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(RUN_APT_PACKAGES)" || \
	  echo "warning: could not install $(RUN_APT_PACKAGES): names in mp4 recordings use a fallback font," \
	       "mp3 is encoded by PyAV's copy of LAME (3.5-4x the CPU)"

## apt-deps: Debian tools the tests use (espeak-ng, sox, fonts, PostgreSQL, Redis, ffmpeg: bench row 7b); skipped if present
apt-deps:
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(APT_PACKAGES)"

apt-install:
	@missing=""; for p in $(PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

test-deps: $(STAMP) $(TOOLS_STAMP) $(NODE_STAMP) apt-deps

## test: install test dependencies (pip, npm, Debian) and run the suite (about 7 min, in two processes; not the slow-marked tests)
test: test-deps
	@$(MAKE) --no-print-directory compile REQUIRE_COMPILED=1
	$(BIN)/pytest -q -m "not slow" $(PARALLEL)
	CALLREC_COMPILED=0 $(BIN)/pytest -q -m "not slow" $(PARALLEL) tests/unit  # the interpreted fallback keeps working

## test-slow: the slow-marked tests (20 kill -9s, 1000 cancelled streams, a minute of A/V sync, store outages,
## the three-node cluster behind HAProxy: ~7 min)
test-slow: test-deps
	@$(MAKE) --no-print-directory compile REQUIRE_COMPILED=1
	$(BIN)/pytest -q -m slow

## proto: regenerate the Python stubs in server/callrec/v1 from protos/
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=server --grpc_python_out=server --pyi_out=server protos/callrec/v1/*.proto

## lint: ruff, mypy (the configuration of both in pyproject.toml) and buf; `make test` runs ruff and mypy too
lint: $(STAMP) $(TOOLS_STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	tools/node_modules/.bin/buf lint

## bench: the performance table of SPEC §7 (--quick for a smoke run: make bench ARGS=--quick)
bench: $(STAMP) apt-deps compile
	@$(MAKE) --no-print-directory apt-install PACKAGES="ffmpeg"
	$(BIN)/python -m bench $(ARGS)

## cluster: PostgreSQL, Redis, three callrec nodes (127.0.0.1:50061-50063), a control node (50064) and HAProxy
## (127.0.0.1:50050) from Debian's packages, node data under ./cluster-data; Ctrl-C stops them (bench/cluster.py,
## deploy/haproxy.cfg)
cluster: $(STAMP) run-deps compile
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(CLUSTER_APT_PACKAGES)"
	$(BIN)/python -m bench.cluster $(ARGS)

## soak: 30 min, 20 calls, a kill -9 every 2-5 min and a 10-min store outage (moto on loopback);
## prints media lost per kill and uploads lost, fails above 1 s / any (make soak ARGS=--quick: ~8 min)
soak: $(STAMP) run-deps compile
	$(BIN)/python -m bench.soak $(ARGS)

clean:
	-[ -x $(BIN)/python ] && $(BIN)/python tools/build_native.py --clean
	rm -rf $(VENV) tools/node_modules clients/node/node_modules server/build

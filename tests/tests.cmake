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
    "LP_SOURCE_DIR=${CMAKE_SOURCE_DIR}")
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

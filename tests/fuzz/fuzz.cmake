# SPDX-License-Identifier: MIT
# libFuzzer harnesses: one executable per tests/fuzz/fuzz_<parser>.c, linked
# with libFuzzer's main. Included by CMakeLists.txt only with -DLP_FUZZ=ON
# (clang), where the library itself is built with coverage, ASan and UBSan.
# Each harness is also a CTest that replays its committed seed corpus and
# regression inputs (tests/fuzz/corpus/<name>, tests/fuzz/regress/<name>).
file(GLOB LP_FUZZ_SOURCES CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/fuzz/fuzz_*.c)
enable_testing()
foreach(src ${LP_FUZZ_SOURCES})
  get_filename_component(name ${src} NAME_WE)
  add_executable(${name} ${src})
  target_include_directories(${name} PRIVATE ${CMAKE_SOURCE_DIR}/src)
  target_compile_definitions(${name} PRIVATE
                             LP_FUZZ_MODEL_DIR="${CMAKE_SOURCE_DIR}/models/layerpipe-tiny-8bit")
  target_link_options(${name} PRIVATE -fsanitize=fuzzer)
  target_link_libraries(${name} PRIVATE layerpipe_lib)
  string(REGEX REPLACE "^fuzz_" "" short ${name})
  set(dirs ${CMAKE_SOURCE_DIR}/tests/fuzz/corpus/${short})
  if(EXISTS ${CMAKE_SOURCE_DIR}/tests/fuzz/regress/${short})
    list(APPEND dirs ${CMAKE_SOURCE_DIR}/tests/fuzz/regress/${short})
  endif()
  # -runs=0 with directories: every file is run once, nothing is mutated
  add_test(NAME fuzz/${short}_replay COMMAND ${name} -runs=0 ${dirs})
  set_tests_properties(fuzz/${short}_replay PROPERTIES LABELS fuzz TIMEOUT 300)
endforeach()

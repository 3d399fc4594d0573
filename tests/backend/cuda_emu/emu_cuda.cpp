// SPDX-License-Identifier: MIT
// emu_cuda.cpp -- src/backend/cuda/cuda.cu compiled as C++ against the
// emulated runtime; its public entry points are renamed (lp_backend_cuda_emu_*)
// so that the test links beside whatever the library has.
#include "backend/cuda/cuda.cu"

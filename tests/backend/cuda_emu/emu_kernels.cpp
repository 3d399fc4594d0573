// SPDX-License-Identifier: MIT
// emu_kernels.cpp -- src/backend/cuda/kernels.cu, matmul_tc.cu and argmax.cu compiled as
// C++ against the emulated runtime (cuda_runtime.h beside this file). The
// kernels are renamed (the newer ones are static): a build with CUDA links
// the real ones (their host stubs) into the same test.
#define k_gemv lp_emu_k_gemv
#define k_gemv_generic lp_emu_k_gemv_generic
#define k_embed lp_emu_k_embed
#define k_rmsnorm lp_emu_k_rmsnorm
#define k_rmsnorm_wide lp_emu_k_rmsnorm_wide
#define k_rope lp_emu_k_rope
#define k_kv_store lp_emu_k_kv_store
#define k_attn lp_emu_k_attn
#define k_attn_combine lp_emu_k_attn_combine
#define k_silu_mul lp_emu_k_silu_mul
#define k_add lp_emu_k_add
#define k_gather_rows lp_emu_k_gather_rows
#define k_read_probe lp_emu_k_read_probe
#define k_qk_norm_rope_store lp_emu_k_qk_norm_rope_store
#include "backend/cuda/kernels.cu"
#include "backend/cuda/matmul_tc.cu"
#include "backend/cuda/argmax.cu"

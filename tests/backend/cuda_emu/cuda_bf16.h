// SPDX-License-Identifier: MIT
// cuda_bf16.h (emulated) -- __nv_bfloat16 with round-to-nearest-even conversion.
#ifndef LP_CUDA_EMU_BF16_H
#define LP_CUDA_EMU_BF16_H

#include "util/fp16.h"
#include "cuda_runtime.h"

struct __nv_bfloat16 {
    uint16_t x;
};
static inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    return __nv_bfloat16{lp_f32_to_bf16(f)};
}

#endif

// SPDX-License-Identifier: MIT
// cuda_fp16.h (emulated) -- __half as its bits, converted by backend/convert.h.
#ifndef LP_CUDA_EMU_FP16_H
#define LP_CUDA_EMU_FP16_H

#include "util/fp16.h"
#include "cuda_runtime.h"

struct __half {
    uint16_t x;
};
static inline __half __ushort_as_half(unsigned short h) {
    return __half{h};
}
static inline float __half2float(__half h) {
    return lp_f16_to_f32(h.x);
}

#endif

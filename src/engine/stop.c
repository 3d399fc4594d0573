// SPDX-License-Identifier: MIT
// stop.c -- what generation needs from the engine module besides the
// sampler: the names of stop reasons and the end-of-sequence test. The loop
// itself (prefill, sample, decode, for many sequences at once) is the
// scheduler's (src/cluster/sched.c).
#include "layerpipe/engine.h"

const char *lp_stop_reason_str(enum lp_stop_reason reason) {
    switch (reason) {
    case LP_STOP_NONE: return "none";
    case LP_STOP_EOS: return "eos";
    case LP_STOP_LENGTH: return "length";
    case LP_STOP_CONTEXT: return "context";
    case LP_STOP_CALLBACK: return "stopped";
    }
    return "?";
}

bool lp_model_config_is_eos(const struct lp_model_config *c, int32_t id) {
    for (int i = 0; i < c->n_eos_ids; i++)
        if (c->eos_ids[i] == id) return true;
    return false;
}

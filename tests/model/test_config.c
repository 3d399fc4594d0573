// SPDX-License-Identifier: MIT
// test_config.c -- config.json and generation_config.json parsing: HF
// defaults for a minimal Qwen3 config, every required field, wrong types,
// out-of-range values, GQA divisibility, MLX quantization parameters, eos
// ids (number or list, merged across both files without duplicates) and
// generation defaults. Every error must name the file and the field.
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lp_test.h"
#include "model/internal.h"

#define CFG_FILE "dir/config.json"
#define GEN_FILE "dir/generation_config.json"

// The minimal valid Qwen3 config.
static json_t *base_cfg(void) {
    json_t *j = json_pack("{s:s, s:i, s:i, s:i, s:i, s:i}", "model_type", "qwen3", "vocab_size",
                          16, "hidden_size", 8, "intermediate_size", 16, "num_hidden_layers", 2,
                          "num_attention_heads", 4);
    if (!j) abort();
    return j;
}

// Parses j (stolen) as config.json.
static enum lp_status parse_cfg(json_t *j, struct lp_model_config *cfg, struct lp_error *err) {
    char *text = json_dumps(j, 0);
    json_decref(j);
    if (!text) abort();
    lp_error_clear(err);
    enum lp_status st = lp_config_parse(cfg, text, CFG_FILE, err);
    free(text);
    return st;
}

// base config with key set to value (stolen; NULL deletes the key).
static json_t *with(const char *key, json_t *value) {
    json_t *j = base_cfg();
    if (value) json_object_set_new(j, key, value);
    else json_object_del(j, key);
    return j;
}

#define EXPECT_CFG(json, status, needle1, needle2)                                                 \
    do {                                                                                           \
        struct lp_model_config c_;                                                                 \
        struct lp_error e_;                                                                        \
        enum lp_status st_ = parse_cfg((json), &c_, &e_);                                          \
        CHECK_MSG(st_ == (status), "line %d: got %s (%s), want %s", __LINE__, lp_status_str(st_),  \
                  e_.msg, lp_status_str(status));                                                  \
        CHECK_MSG(strstr(e_.msg, CFG_FILE) != NULL, "msg lacks file: %s", e_.msg);                 \
        if (needle1)                                                                               \
            CHECK_MSG(strstr(e_.msg, (const char *)(needle1)) != NULL, "msg lacks '%s': %s",     \
                      (const char *)(needle1), e_.msg);                                            \
        if (needle2)                                                                               \
            CHECK_MSG(strstr(e_.msg, (const char *)(needle2)) != NULL, "msg lacks '%s': %s",     \
                      (const char *)(needle2), e_.msg);                                            \
    } while (0)

static const char *NONE = NULL;

static void test_defaults(void) {
    struct lp_model_config c;
    struct lp_error err;
    CHECK_OK(parse_cfg(base_cfg(), &c, &err), &err);
    CHECK(c.vocab_size == 16);
    CHECK(c.hidden_size == 8);
    CHECK(c.intermediate_size == 16);
    CHECK(c.n_layers == 2);
    CHECK(c.n_heads == 4);
    CHECK(c.n_kv_heads == 4);
    CHECK(c.head_dim == 128);
    CHECK(c.max_position_embeddings == 32768);
    CHECK_NEAR(c.rms_norm_eps, 1e-6, 1e-12);
    CHECK_NEAR(c.rope_theta, 10000.0, 1e-3);
    CHECK(c.tie_word_embeddings == false);
    CHECK(c.attention_bias == false);
    CHECK(c.n_eos_ids == 0);
    CHECK(c.bos_token_id == -1);
    CHECK(c.quant_bits == 0);
    CHECK(c.quant_group_size == 0);

    // A Qwen3-1.7B-like config with every field set.
    const char *full =
        "{\"architectures\": [\"Qwen3ForCausalLM\"], \"attention_bias\": false,"
        " \"attention_dropout\": 0.0, \"bos_token_id\": 151643, \"eos_token_id\": 151645,"
        " \"head_dim\": 128, \"hidden_act\": \"silu\", \"hidden_size\": 2048,"
        " \"initializer_range\": 0.02, \"intermediate_size\": 6144,"
        " \"max_position_embeddings\": 40960, \"max_window_layers\": 28,"
        " \"model_type\": \"qwen3\", \"num_attention_heads\": 16, \"num_hidden_layers\": 28,"
        " \"num_key_value_heads\": 8, \"rms_norm_eps\": 1e-06, \"rope_scaling\": null,"
        " \"rope_theta\": 1000000, \"sliding_window\": null, \"tie_word_embeddings\": true,"
        " \"torch_dtype\": \"bfloat16\", \"transformers_version\": \"4.51.0\","
        " \"use_cache\": true, \"use_sliding_window\": false, \"vocab_size\": 151936}";
    lp_error_clear(&err);
    CHECK_OK(lp_config_parse(&c, full, CFG_FILE, &err), &err);
    CHECK(c.vocab_size == 151936 && c.hidden_size == 2048 && c.intermediate_size == 6144);
    CHECK(c.n_layers == 28 && c.n_heads == 16 && c.n_kv_heads == 8 && c.head_dim == 128);
    CHECK(c.max_position_embeddings == 40960);
    CHECK_NEAR(c.rope_theta, 1e6, 1.0);
    CHECK_NEAR(c.rms_norm_eps, 1e-6, 1e-12);
    CHECK(c.tie_word_embeddings == true);
    CHECK(c.bos_token_id == 151643);
    CHECK(c.n_eos_ids == 1 && c.eos_ids[0] == 151645);

    // null optional fields take defaults
    json_t *j = base_cfg();
    json_object_set_new(j, "num_key_value_heads", json_null());
    json_object_set_new(j, "head_dim", json_null());
    json_object_set_new(j, "rope_theta", json_null());
    json_object_set_new(j, "tie_word_embeddings", json_null());
    json_object_set_new(j, "quantization", json_null());
    CHECK_OK(parse_cfg(j, &c, &err), &err);
    CHECK(c.n_kv_heads == 4 && c.head_dim == 128 && c.tie_word_embeddings == false &&
          c.quant_bits == 0);
    CHECK_NEAR(c.rope_theta, 10000.0, 1e-3);
    // rope_scaling "default" accepted
    CHECK_OK(parse_cfg(with("rope_scaling", json_pack("{s:s}", "rope_type", "default")), &c, &err),
             &err);
}

static void test_required(void) {
    static const char *required[] = {"model_type",          "vocab_size",
                                     "hidden_size",         "intermediate_size",
                                     "num_hidden_layers",   "num_attention_heads"};
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++) {
        EXPECT_CFG(with(required[i], NULL), LP_ERR_FORMAT, required[i], "missing");
        if (strcmp(required[i], "model_type") != 0)
            EXPECT_CFG(with(required[i], json_null()), LP_ERR_FORMAT, required[i], "missing");
    }
    EXPECT_CFG(with("model_type", json_string("llama")), LP_ERR_UNSUPPORTED, "llama", "model_type");
    EXPECT_CFG(with("model_type", json_string("qwen2")), LP_ERR_UNSUPPORTED, "qwen2", NONE);
    EXPECT_CFG(with("model_type", json_string("qwen3_moe")), LP_ERR_UNSUPPORTED, "qwen3_moe",
               NONE);
    EXPECT_CFG(with("model_type", json_integer(3)), LP_ERR_FORMAT, "model_type", NONE);
}

static void test_types_and_ranges(void) {
    static const char *ints[] = {"vocab_size",          "hidden_size",
                                 "intermediate_size",   "num_hidden_layers",
                                 "num_attention_heads", "num_key_value_heads",
                                 "head_dim",            "max_position_embeddings",
                                 "bos_token_id"};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        EXPECT_CFG(with(ints[i], json_string("8")), LP_ERR_FORMAT, ints[i], "integer");
        EXPECT_CFG(with(ints[i], json_real(8.5)), LP_ERR_FORMAT, ints[i], "integer");
        EXPECT_CFG(with(ints[i], json_true()), LP_ERR_FORMAT, ints[i], "integer");
        EXPECT_CFG(with(ints[i], json_array()), LP_ERR_FORMAT, ints[i], "integer");
        EXPECT_CFG(with(ints[i], json_integer(-2)), LP_ERR_FORMAT, ints[i], "-2");
        EXPECT_CFG(with(ints[i], json_integer((json_int_t)1 << 40)), LP_ERR_FORMAT, ints[i],
                   NONE);
    }
    static const char *zero_bad[] = {"vocab_size",          "hidden_size",
                                     "intermediate_size",   "num_hidden_layers",
                                     "num_attention_heads", "num_key_value_heads",
                                     "head_dim",            "max_position_embeddings"};
    for (size_t i = 0; i < sizeof zero_bad / sizeof zero_bad[0]; i++)
        EXPECT_CFG(with(zero_bad[i], json_integer(0)), LP_ERR_FORMAT, zero_bad[i], NONE);
    // floats
    EXPECT_CFG(with("rms_norm_eps", json_string("1e-6")), LP_ERR_FORMAT, "rms_norm_eps", "number");
    EXPECT_CFG(with("rms_norm_eps", json_real(-1e-6)), LP_ERR_FORMAT, "rms_norm_eps", NONE);
    EXPECT_CFG(with("rms_norm_eps", json_real(2.0)), LP_ERR_FORMAT, "rms_norm_eps", NONE);
    EXPECT_CFG(with("rope_theta", json_false()), LP_ERR_FORMAT, "rope_theta", "number");
    EXPECT_CFG(with("rope_theta", json_real(0.5)), LP_ERR_FORMAT, "rope_theta", NONE);
    EXPECT_CFG(with("rope_theta", json_real(-10000.0)), LP_ERR_FORMAT, "rope_theta", NONE);
    EXPECT_CFG(with("rope_theta", json_real(1e30)), LP_ERR_FORMAT, "rope_theta", NONE);
    {
        struct lp_model_config c;
        struct lp_error err;
        CHECK_OK(parse_cfg(with("rope_theta", json_integer(1000000)), &c, &err), &err);
        CHECK_NEAR(c.rope_theta, 1e6, 1.0);
        CHECK_OK(parse_cfg(with("rms_norm_eps", json_real(1e-5)), &c, &err), &err);
        CHECK_NEAR(c.rms_norm_eps, 1e-5, 1e-11);
    }
    // booleans
    EXPECT_CFG(with("tie_word_embeddings", json_integer(1)), LP_ERR_FORMAT, "tie_word_embeddings",
               NONE);
    EXPECT_CFG(with("tie_word_embeddings", json_string("true")), LP_ERR_FORMAT,
               "tie_word_embeddings", NONE);
    EXPECT_CFG(with("attention_bias", json_string("no")), LP_ERR_FORMAT, "attention_bias", NONE);
    EXPECT_CFG(with("attention_bias", json_true()), LP_ERR_UNSUPPORTED, "attention_bias", NONE);
    // unsupported features
    EXPECT_CFG(with("hidden_act", json_string("gelu")), LP_ERR_UNSUPPORTED, "hidden_act", "gelu");
    EXPECT_CFG(with("use_sliding_window", json_true()), LP_ERR_UNSUPPORTED, "use_sliding_window",
               NONE);
    EXPECT_CFG(with("rope_scaling", json_pack("{s:s, s:f}", "rope_type", "yarn", "factor", 4.0)),
               LP_ERR_UNSUPPORTED, "rope_scaling", "yarn");
    EXPECT_CFG(with("rope_scaling", json_pack("{s:s}", "type", "linear")), LP_ERR_UNSUPPORTED,
               "rope_scaling", "linear");
    // a RoPE type under the newer rope_parameters that would silently run as plain RoPE
    EXPECT_CFG(with("rope_parameters", json_pack("{s:s, s:f}", "rope_type", "yarn", "rope_theta",
                                                 1e6)),
               LP_ERR_UNSUPPORTED, "rope_parameters", "yarn");
    {
        struct lp_model_config c;
        struct lp_error err;
        CHECK_OK(parse_cfg(with("rope_parameters", json_pack("{s:s, s:f}", "rope_type", "default",
                                                             "rope_theta", 1e6)),
                           &c, &err),
                 &err);
        CHECK_NEAR(c.rope_theta, 1e6, 1.0);
    }
    // odd head_dim
    EXPECT_CFG(with("head_dim", json_integer(7)), LP_ERR_FORMAT, "head_dim", "7");
    // heads not a multiple of kv heads (and kv > heads)
    EXPECT_CFG(with("num_key_value_heads", json_integer(3)), LP_ERR_FORMAT, "num_key_value_heads",
               "num_attention_heads");
    EXPECT_CFG(with("num_key_value_heads", json_integer(8)), LP_ERR_FORMAT, "num_key_value_heads",
               NONE);
    {
        struct lp_model_config c;
        struct lp_error err;
        CHECK_OK(parse_cfg(with("num_key_value_heads", json_integer(2)), &c, &err), &err);
        CHECK(c.n_kv_heads == 2 && c.n_heads == 4);
        CHECK_OK(parse_cfg(with("num_key_value_heads", json_integer(1)), &c, &err), &err);
        CHECK(c.n_kv_heads == 1);
        CHECK_OK(parse_cfg(with("head_dim", json_integer(64)), &c, &err), &err);
        CHECK(c.head_dim == 64);
    }
    // invalid JSON and non-objects
    struct lp_model_config c;
    struct lp_error err;
    const char *bad[] = {"", "{", "{\"model_type\": \"qwen3\",}", "not json", "[]", "42",
                         "{\"a\": 1, \"a\": 2}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        lp_error_clear(&err);
        enum lp_status st = lp_config_parse(&c, bad[i], CFG_FILE, &err);
        CHECK_MSG(st == LP_ERR_FORMAT, "'%s': %s", bad[i], lp_status_str(st));
        CHECK_MSG(strstr(err.msg, CFG_FILE) != NULL, "'%s': %s", bad[i], err.msg);
    }
}

static void test_quantization(void) {
    int bits_ok[] = {4, 8}, groups_ok[] = {32, 64, 128};
    for (int b = 0; b < 2; b++)
        for (int g = 0; g < 3; g++) {
            struct lp_model_config c;
            struct lp_error err;
            json_t *q = json_pack("{s:i, s:i}", "bits", bits_ok[b], "group_size", groups_ok[g]);
            CHECK_OK(parse_cfg(with("quantization", q), &c, &err), &err);
            CHECK(c.quant_bits == bits_ok[b] && c.quant_group_size == groups_ok[g]);
        }
    {
        struct lp_model_config c;
        struct lp_error err;
        json_t *q = json_pack("{s:i, s:i, s:s}", "bits", 4, "group_size", 64, "mode", "affine");
        CHECK_OK(parse_cfg(with("quantization", q), &c, &err), &err);
        CHECK(c.quant_bits == 4 && c.quant_group_size == 64);
    }
    EXPECT_CFG(with("quantization", json_pack("{s:i, s:i}", "bits", 3, "group_size", 64)),
               LP_ERR_UNSUPPORTED, "bits", "3");
    EXPECT_CFG(with("quantization", json_pack("{s:i, s:i}", "bits", 2, "group_size", 64)),
               LP_ERR_UNSUPPORTED, "bits", NONE);
    EXPECT_CFG(with("quantization", json_pack("{s:i, s:i}", "bits", 4, "group_size", 48)),
               LP_ERR_UNSUPPORTED, "group_size", "48");
    EXPECT_CFG(with("quantization", json_pack("{s:i, s:i}", "bits", 4, "group_size", 256)),
               LP_ERR_UNSUPPORTED, "group_size", NONE);
    EXPECT_CFG(with("quantization", json_pack("{s:i}", "group_size", 64)), LP_ERR_FORMAT, "bits",
               NONE);
    EXPECT_CFG(with("quantization", json_pack("{s:i}", "bits", 4)), LP_ERR_FORMAT, "group_size",
               NONE);
    EXPECT_CFG(with("quantization", json_pack("{s:s, s:i}", "bits", "4", "group_size", 64)),
               LP_ERR_FORMAT, "bits", NONE);
    EXPECT_CFG(with("quantization", json_pack("{s:i, s:i}", "bits", -4, "group_size", 64)),
               LP_ERR_FORMAT, "bits", NONE);
    EXPECT_CFG(with("quantization", json_integer(4)), LP_ERR_FORMAT, "quantization", NONE);
    EXPECT_CFG(with("quantization",
                    json_pack("{s:i, s:i, s:s}", "bits", 4, "group_size", 64, "mode", "mxfp4")),
               LP_ERR_UNSUPPORTED, "mxfp4", NONE);
}

static void test_eos_and_generation(void) {
    struct lp_model_config c;
    struct lp_generation_config g;
    struct lp_error err;
    // config eos as a number, generation as a list overlapping it
    json_t *big = with("eos_token_id", json_integer(151645));
    json_object_set_new(big, "vocab_size", json_integer(151936));
    CHECK_OK(parse_cfg(big, &c, &err), &err);
    CHECK(c.n_eos_ids == 1 && c.eos_ids[0] == 151645);
    lp_error_clear(&err);
    CHECK_OK(lp_generation_config_parse(&g, &c,
                                        "{\"bos_token_id\": 151643, \"do_sample\": true,"
                                        " \"eos_token_id\": [151645, 151643, 151645],"
                                        " \"pad_token_id\": 151643, \"temperature\": 0.6,"
                                        " \"top_k\": 20, \"top_p\": 0.95,"
                                        " \"transformers_version\": \"4.51.0\"}",
                                        GEN_FILE, &err),
             &err);
    CHECK(c.n_eos_ids == 2 && c.eos_ids[0] == 151645 && c.eos_ids[1] == 151643);
    CHECK_NEAR(g.temperature, 0.6, 1e-6);
    CHECK(g.top_k == 20);
    CHECK_NEAR(g.top_p, 0.95, 1e-6);
    CHECK_NEAR(g.min_p, 0.0, 0.0);
    CHECK_NEAR(g.repetition_penalty, 1.0, 0.0);
    CHECK(g.do_sample == true);

    // config eos as a list with duplicates, generation as a number
    CHECK_OK(parse_cfg(with("eos_token_id", json_pack("[i, i, i]", 1, 2, 1)), &c, &err), &err);
    CHECK(c.n_eos_ids == 2 && c.eos_ids[0] == 1 && c.eos_ids[1] == 2);
    CHECK_OK(lp_generation_config_parse(&g, &c, "{\"eos_token_id\": 3}", GEN_FILE, &err), &err);
    CHECK(c.n_eos_ids == 3 && c.eos_ids[2] == 3);
    CHECK_OK(lp_generation_config_parse(&g, &c, "{\"eos_token_id\": 2}", GEN_FILE, &err), &err);
    CHECK(c.n_eos_ids == 3);
    // empty list and null are fine
    CHECK_OK(parse_cfg(with("eos_token_id", json_array()), &c, &err), &err);
    CHECK(c.n_eos_ids == 0);
    CHECK_OK(parse_cfg(with("eos_token_id", json_null()), &c, &err), &err);
    CHECK(c.n_eos_ids == 0);
    // bad eos values: past the vocabulary (the base config's vocab_size is 16), not ids
    EXPECT_CFG(with("eos_token_id", json_integer(16)), LP_ERR_FORMAT, "eos_token_id",
               "past the vocabulary");
    CHECK(lp_generation_config_parse(&g, &c, "{\"eos_token_id\": [2, 999999]}", GEN_FILE, &err) ==
              LP_ERR_FORMAT &&
          strstr(err.msg, "past the vocabulary"));
    EXPECT_CFG(with("eos_token_id", json_string("2")), LP_ERR_FORMAT, "eos_token_id", NONE);
    EXPECT_CFG(with("eos_token_id", json_integer(-1)), LP_ERR_FORMAT, "eos_token_id", NONE);
    EXPECT_CFG(with("eos_token_id", json_pack("[i, s]", 1, "x")), LP_ERR_FORMAT, "eos_token_id",
               NONE);
    EXPECT_CFG(with("eos_token_id", json_integer((json_int_t)1 << 40)), LP_ERR_FORMAT,
               "eos_token_id", NONE);
    EXPECT_CFG(with("eos_token_id", json_pack("[i,i,i,i,i,i,i,i,i]", 1, 2, 3, 4, 5, 6, 7, 8, 9)),
               LP_ERR_UNSUPPORTED, "eos", NONE);
    CHECK_OK(parse_cfg(with("eos_token_id", json_pack("[i,i,i,i,i,i,i,i]", 1, 2, 3, 4, 5, 6, 7, 8)),
                       &c, &err),
             &err);
    CHECK(c.n_eos_ids == LP_MAX_EOS_IDS);
    lp_error_clear(&err);
    CHECK(lp_generation_config_parse(&g, &c, "{\"eos_token_id\": 9}", GEN_FILE, &err) ==
          LP_ERR_UNSUPPORTED);
    CHECK_MSG(strstr(err.msg, GEN_FILE) != NULL, "%s", err.msg);
    CHECK_OK(lp_generation_config_parse(&g, &c, "{\"eos_token_id\": [8, 1]}", GEN_FILE, &err),
             &err);

    // generation defaults
    CHECK_OK(parse_cfg(base_cfg(), &c, &err), &err);
    CHECK_OK(lp_generation_config_parse(&g, &c, "{}", GEN_FILE, &err), &err);
    CHECK_NEAR(g.temperature, 1.0, 0.0);
    CHECK(g.top_k == 50);
    CHECK_NEAR(g.top_p, 1.0, 0.0);
    CHECK_NEAR(g.min_p, 0.0, 0.0);
    CHECK_NEAR(g.repetition_penalty, 1.0, 0.0);
    CHECK(g.do_sample == false);
    CHECK(c.n_eos_ids == 0);
    struct lp_generation_config d;
    lp_generation_config_default(&d);
    CHECK(d.temperature == g.temperature && d.top_k == g.top_k && d.top_p == g.top_p &&
          d.min_p == g.min_p && d.repetition_penalty == g.repetition_penalty &&
          d.do_sample == g.do_sample);
    CHECK_OK(lp_generation_config_parse(&g, &c,
                                        "{\"min_p\": 0.05, \"repetition_penalty\": 1.1,"
                                        " \"top_k\": 0, \"temperature\": 0}",
                                        GEN_FILE, &err),
             &err);
    CHECK_NEAR(g.min_p, 0.05, 1e-6);
    CHECK_NEAR(g.repetition_penalty, 1.1, 1e-6);
    CHECK(g.top_k == 0);
    CHECK_NEAR(g.temperature, 0.0, 0.0);

    // generation errors name the file and the field
    struct {
        const char *text, *needle;
        enum lp_status st;
    } bad[] = {
        {"{\"temperature\": \"hot\"}", "temperature", LP_ERR_FORMAT},
        {"{\"temperature\": -1}", "temperature", LP_ERR_FORMAT},
        {"{\"top_k\": -1}", "top_k", LP_ERR_FORMAT},
        {"{\"top_k\": 0.5}", "top_k", LP_ERR_FORMAT},
        {"{\"top_p\": 1.5}", "top_p", LP_ERR_FORMAT},
        {"{\"top_p\": -0.1}", "top_p", LP_ERR_FORMAT},
        {"{\"min_p\": 2}", "min_p", LP_ERR_FORMAT},
        {"{\"repetition_penalty\": -1}", "repetition_penalty", LP_ERR_FORMAT},
        {"{\"do_sample\": 1}", "do_sample", LP_ERR_FORMAT},
        {"{\"eos_token_id\": \"x\"}", "eos_token_id", LP_ERR_FORMAT},
        {"{\"eos_token_id\": [1, -5]}", "eos_token_id", LP_ERR_FORMAT},
        {"{\"top_k\": 20", NULL, LP_ERR_FORMAT},
        {"", NULL, LP_ERR_FORMAT},
        {"[1]", NULL, LP_ERR_FORMAT},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_OK(parse_cfg(base_cfg(), &c, &err), &err);
        lp_error_clear(&err);
        enum lp_status st = lp_generation_config_parse(&g, &c, bad[i].text, GEN_FILE, &err);
        CHECK_MSG(st == bad[i].st, "'%s': %s", bad[i].text, lp_status_str(st));
        CHECK_MSG(strstr(err.msg, GEN_FILE) != NULL, "'%s': %s", bad[i].text, err.msg);
        if (bad[i].needle)
            CHECK_MSG(strstr(err.msg, bad[i].needle) != NULL, "'%s': %s", bad[i].text, err.msg);
    }
}

int main(void) {
    test_defaults();
    test_required();
    test_types_and_ranges();
    test_quantization();
    test_eos_and_generation();
    return lp_test_finish("test_config");
}

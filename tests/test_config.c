/* test_config.c -- config.json parsing: real checkpoints and error cases. */
#include <jansson.h>

#include "gq/config.h"
#include "test.h"

static int parse(gq_config *c, const char *json) { return gq_config_parse(c, json, strlen(json), "cfg.json"); }

/* The CodeLlama-7B index lists exactly the tensors the config implies, and
 * their total bf16 size equals 2 bytes x the parameter count gq derives. */
static void test_codellama(void) {
    TEST_BEGIN("codellama-7b");
    gq_config c;
    TEST_OK(gq_config_load(&c, gq_test_data("codellama-7b-hf-meta")), "load CodeLlama-7B config");
    TEST_CHECK(!strcmp(c.arch, "LlamaForCausalLM"), "arch %s", c.arch);
    TEST_CHECK(c.hidden == 4096 && c.intermediate == 11008 && c.n_layers == 32, "shape %d %d %d", c.hidden,
               c.intermediate, c.n_layers);
    TEST_CHECK(c.n_heads == 32 && c.n_kv_heads == 32 && c.head_dim == 128, "heads %d/%d hd %d", c.n_heads,
               c.n_kv_heads, c.head_dim);
    TEST_CHECK(c.vocab == 32016 && c.max_pos == 16384, "vocab %d max_pos %d", c.vocab, c.max_pos);
    TEST_NEAR(c.rope_theta, 1e6, 0, "rope_theta (integer in the file)");
    TEST_CHECK(c.rope_type == GQ_ROPE_NONE && c.dtype == GQ_DT_BF16 && !c.tie_word_embeddings, "rope/dtype/tie");
    TEST_CHECK(c.bos_id == 1 && c.eos_id == 2, "bos %d eos %d", c.bos_id, c.eos_id);

    json_error_t je;
    json_t *idx = json_load_file(gq_test_data("codellama-7b-hf-meta/model.safetensors.index.json"), 0, &je);
    TEST_CHECK(idx != NULL, "index loads");
    if (!idx) return;
    json_t *wm = json_object_get(idx, "weight_map");
    json_int_t total = json_integer_value(json_object_get(json_object_get(idx, "metadata"), "total_size"));
    TEST_CHECK(gq_config_param_count(&c) * 2 == total, "params %lld x 2 bytes == total_size %lld",
               (long long)gq_config_param_count(&c), (long long)total);
    static const char *per_layer[] = {"input_layernorm.weight", "post_attention_layernorm.weight",
                                      "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                      "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                                      "mlp.gate_proj.weight",   "mlp.up_proj.weight",
                                      "mlp.down_proj.weight"};
    size_t expected = 3, found = 0;
    char name[256];
    for (int l = 0; l < c.n_layers; l++) {
        for (int k = 0; k < 9; k++) {
            snprintf(name, sizeof name, "model.layers.%d.%s", l, per_layer[k]);
            found += json_object_get(wm, name) != NULL;
            expected++;
        }
    }
    found += json_object_get(wm, "model.embed_tokens.weight") != NULL;
    found += json_object_get(wm, "model.norm.weight") != NULL;
    found += json_object_get(wm, "lm_head.weight") != NULL;
    TEST_CHECK(found == expected && json_object_size(wm) == expected, "index has %zu/%zu expected tensors of %zu",
               found, expected, json_object_size(wm));
    json_decref(idx);
}

static void test_pycoder(void) {
    TEST_BEGIN("pycoder");
    gq_config c;
    TEST_OK(gq_config_load(&c, gq_test_data("pycoder-30m-meta/config.json")), "load pycoder-30m config");
    TEST_CHECK(c.hidden == 512 && c.intermediate == 1280 && c.n_layers == 8 && c.n_heads == 8 && c.n_kv_heads == 4,
               "pycoder-30m shape");
    TEST_CHECK(c.head_dim == 64 && c.vocab == 8192 && !c.tie_word_embeddings && c.dtype == GQ_DT_F16, "30m misc");
    TEST_NEAR(c.rms_eps, 1e-5, 1e-12, "rms eps");
    /* train_report.json says 30,417,408 parameters */
    TEST_CHECK(gq_config_param_count(&c) == 30417408, "30m params %lld", (long long)gq_config_param_count(&c));

    TEST_OK(gq_config_load(&c, gq_test_data("pycoder-5m")), "load pycoder-5m config from the directory");
    TEST_CHECK(c.hidden == 256 && c.n_layers == 4 && c.n_heads == 4 && c.n_kv_heads == 2 && c.tie_word_embeddings,
               "pycoder-5m shape");
    TEST_NEAR(c.rope_theta, 1e6, 0, "rope theta");
}

static void test_variants(void) {
    TEST_BEGIN("variants");
    gq_config c;
    /* transformers 5 layout: rope_theta inside rope_parameters */
    TEST_OK(parse(&c, "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":128,"
                      "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":2,\"vocab_size\":100,"
                      "\"rope_parameters\":{\"rope_type\":\"default\",\"rope_theta\":500000.0},\"dtype\":\"bfloat16\"}"),
            "rope_parameters");
    TEST_NEAR(c.rope_theta, 500000.0, 0, "theta from rope_parameters");
    TEST_CHECK(c.dtype == GQ_DT_BF16 && c.head_dim == 16 && c.n_kv_heads == 2, "dtype key, derived head_dim");

    TEST_OK(parse(&c, "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":128,"
                      "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":100,\"rope_theta\":500000.0,"
                      "\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8.0,\"low_freq_factor\":1.0,"
                      "\"high_freq_factor\":4.0,\"original_max_position_embeddings\":8192},"
                      "\"eos_token_id\":[128001,128008,128009],\"head_dim\":32}"),
            "llama3 rope scaling");
    TEST_CHECK(c.rope_type == GQ_ROPE_LLAMA3 && c.rope_factor == 8.0 && c.rope_orig_max_pos == 8192, "llama3 fields");
    TEST_CHECK(c.n_kv_heads == 4 && c.head_dim == 32, "kv heads default to heads; explicit head_dim");
    TEST_CHECK(c.n_eos == 3 && c.eos_id == 128001 && c.eos_ids[2] == 128009, "eos list");

    TEST_OK(parse(&c, "{\"architectures\":[\"MistralForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":128,"
                      "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":1,\"vocab_size\":100,"
                      "\"rope_scaling\":{\"type\":\"linear\",\"factor\":2.0},\"sliding_window\":null,"
                      "\"attention_bias\":true}"),
            "Mistral, linear scaling (legacy 'type' key)");
    TEST_CHECK(c.rope_type == GQ_ROPE_LINEAR && c.rope_factor == 2.0 && c.attention_bias, "linear fields");
    TEST_NEAR(c.rms_eps, 1e-6, 1e-12, "default rms eps");

    TEST_OK(parse(&c, "{\"model_type\":\"llama\",\"hidden_size\":64,\"intermediate_size\":128,"
                      "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":100,"
                      "\"rope_scaling\":{\"type\":\"dynamic\",\"factor\":2.0},\"max_position_embeddings\":512,"
                      "\"quantization_config\":{\"quant_method\":\"gptq\",\"bits\":4,\"group_size\":128,"
                      "\"desc_act\":false,\"sym\":true,\"checkpoint_format\":\"gptq\"}}"),
            "model_type only; dynamic; quantization_config");
    TEST_CHECK(c.rope_type == GQ_ROPE_DYNAMIC && c.rope_orig_max_pos == 512, "dynamic default original max");
    TEST_CHECK(c.has_quant && c.quant.bits == 4 && c.quant.group_size == 128 && c.quant.sym && !c.quant.desc_act &&
                   !strcmp(c.quant.format, "gptq"),
               "quant config");
}

static void test_errors(void) {
    TEST_BEGIN("errors");
    gq_config c;
    TEST_FAILS(parse(&c, "{\"architectures\":[\"GPT2LMHeadModel\"],\"n_embd\":64}"), GQ_ERR_UNSUPPORTED,
               "\"GPT2LMHeadModel\" is not supported (supported: LlamaForCausalLM, MistralForCausalLM)");
    TEST_FAILS(parse(&c, "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"num_hidden_layers\":2,"
                         "\"num_attention_heads\":4,\"vocab_size\":100}"),
               GQ_ERR_FORMAT, "cfg.json: missing required field \"intermediate_size\"");
    TEST_FAILS(parse(&c, "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":\"64\"}"), GQ_ERR_FORMAT,
               "\"hidden_size\": expected an integer, got a string");
    TEST_FAILS(parse(&c, "{\"architectures\":[\"LlamaForCausalLM\"],"), GQ_ERR_FORMAT, "cfg.json: invalid JSON");
    TEST_FAILS(parse(&c, "[1,2]"), GQ_ERR_FORMAT, "expected a JSON object, got an array");
    TEST_FAILS(parse(&c, "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":128,"
                         "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":3,\"vocab_size\":100}"),
               GQ_ERR_FORMAT, "not a multiple of num_key_value_heads 3");
    TEST_FAILS(parse(&c, "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":128,"
                         "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":100,"
                         "\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4}}"),
               GQ_ERR_UNSUPPORTED, "rope_scaling type \"yarn\" is not supported");
    TEST_FAILS(parse(&c, "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":128,"
                         "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":100,\"hidden_act\":\"gelu\"}"),
               GQ_ERR_UNSUPPORTED, "hidden_act \"gelu\" is not supported");
    TEST_FAILS(gq_config_load(&c, "/nonexistent/dir/config.json"), GQ_ERR_IO, "/nonexistent/dir/config.json: cannot open");
}

/* Values no model has: refused with the field named (gq_model_open runs this before any tensor). */
static void test_absurd(void) {
    TEST_BEGIN("absurd values");
    gq_config c;
    char buf[1024];
    /* a valid base with one field spliced in (a later duplicate key wins in jansson) */
#define BASE                                                                                                           \
    "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":128,"                          \
    "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":2,\"vocab_size\":100"
    static const struct {
        const char *extra;
        const char *msg;
    } cases[] = {
        {",\"num_hidden_layers\":1000000000", "\"num_hidden_layers\" is 1000000000, beyond gq's limit of 4096"},
        {",\"num_hidden_layers\":4097", "\"num_hidden_layers\" is 4097"},
        {",\"num_hidden_layers\":0", "\"num_hidden_layers\" must be positive, got 0"},
        {",\"hidden_size\":0", "\"hidden_size\" must be positive, got 0"},
        {",\"hidden_size\":2000000", "\"hidden_size\" is 2000000, beyond gq's limit of 1048576"},
        {",\"intermediate_size\":0", "\"intermediate_size\" must be positive"},
        {",\"vocab_size\":0", "\"vocab_size\" must be positive"},
        {",\"vocab_size\":20000000", "\"vocab_size\" is 20000000, beyond gq's limit"},
        {",\"vocab_size\":-5", "field \"vocab_size\": expected an integer in [0, 1e9], got -5"},
        {",\"num_key_value_heads\":0", "\"num_key_value_heads\" must be positive"},
        {",\"max_position_embeddings\":0", "\"max_position_embeddings\" must be positive, got 0"},
        {",\"num_attention_heads\":3", "hidden_size 64 is not a multiple of num_attention_heads 3"},
        {",\"num_attention_heads\":4,\"num_key_value_heads\":3", "not a multiple of num_key_value_heads 3"},
        {",\"head_dim\":7", "head_dim must be positive and even, got 7"},
        {",\"num_attention_heads\":512,\"num_key_value_heads\":512,\"head_dim\":4096",
         "num_attention_heads 512 x head_dim 4096 = 2097152, beyond gq's limit"},
        {",\"rms_norm_eps\":0", "\"rms_norm_eps\" must be a number > 0"},
        {",\"rms_norm_eps\":-1e-5", "\"rms_norm_eps\" must be a number > 0"},
        {",\"rms_norm_eps\":1e-50", "\"rms_norm_eps\" must be a number > 0 that float32 holds, got 1e-50"},
        {",\"rms_norm_eps\":\"small\"", "field \"rms_norm_eps\": expected a number, got a string"},
        {",\"rope_theta\":0", "rope_theta must be > 0"},
        {",\"rope_theta\":-10000.0", "rope_theta must be > 0"},
        {",\"rope_theta\":1e300", "rope_theta must be > 0 (and within float32 range), got 1e+300"},
        {",\"rope_scaling\":{\"rope_type\":\"linear\",\"factor\":0}", "rope_scaling.factor must be > 0, got 0"},
        {",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8,\"low_freq_factor\":0,\"high_freq_factor\":4,"
         "\"original_max_position_embeddings\":8192}",
         "rope_scaling.low_freq_factor must be > 0, got 0"},
        {",\"quantization_config\":{\"quant_method\":\"gptq\",\"bits\":4,\"group_size\":4294967424}",
         "quantization_config.group_size 4294967424: expected -1 or a size up to 1048576"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        snprintf(buf, sizeof buf, "%s%s}", BASE, cases[i].extra);
        TEST_FAILS(parse(&c, buf), GQ_ERR_FORMAT, cases[i].msg);
    }
    snprintf(buf, sizeof buf, "%s,\"num_hidden_layers\":4096,\"rms_norm_eps\":1e-6,\"head_dim\":32}", BASE);
    TEST_OK(parse(&c, buf), "at the limits: 4096 layers; head_dim 32 != 64 / 4 is allowed");
#undef BASE
}

int main(void) {
    test_codellama();
    test_pycoder();
    test_variants();
    test_errors();
    test_absurd();
    return TEST_REPORT();
}

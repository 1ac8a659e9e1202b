/* test_config.c -- config.json parsing: real checkpoints and error cases. */
#include <jansson.h>

#include "gq/config.h"
#include "test.h"

static int parse(gq_config *c, const char *json) {
    return gq_config_parse(c, json, strlen(json), "cfg.json");
}

/* The CodeLlama-7B index lists exactly the tensors the config implies, and
 * their total bf16 size equals 2 bytes x the parameter count gq derives. */
static void test_codellama(void) {
    TEST_BEGIN("codellama-7b");
    gq_config c;
    TEST_OK(gq_config_load(&c, gq_test_data("codellama-7b-hf-meta")), "load CodeLlama-7B config");
    TEST_CHECK(!strcmp(c.arch, "LlamaForCausalLM"), "arch %s", c.arch);
    TEST_CHECK(c.hidden == 4096 && c.intermediate == 11008 && c.n_layers == 32, "shape %d %d %d", c.hidden,
               c.intermediate, c.n_layers);
    TEST_CHECK(c.n_heads == 32 && c.n_kv_heads == 32 && c.head_dim == 128, "heads %d/%d hd %d", c.n_heads, c.n_kv_heads,
               c.head_dim);
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
    static const char *per_layer[] = {"input_layernorm.weight",  "post_attention_layernorm.weight",
                                      "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                      "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                                      "mlp.gate_proj.weight",    "mlp.up_proj.weight",
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
    TEST_OK(parse(&c,
                  "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":128,"
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
               "architecture \"GPT2LMHeadModel\" is not supported (supported: LlamaForCausalLM (llama), "
               "MistralForCausalLM (mistral), ");
    TEST_FAILS(parse(&c, "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"num_hidden_layers\":2,"
                         "\"num_attention_heads\":4,\"vocab_size\":100}"),
               GQ_ERR_FORMAT, "cfg.json: missing required field \"intermediate_size\"");
    TEST_FAILS(parse(&c, "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":\"64\"}"), GQ_ERR_FORMAT,
               "\"hidden_size\": expected an integer, got a string");
    TEST_FAILS(parse(&c, "{\"architectures\":[\"LlamaForCausalLM\"],"), GQ_ERR_FORMAT, "cfg.json: invalid JSON");
    TEST_FAILS(parse(&c, "[1,2]"), GQ_ERR_FORMAT, "expected a JSON object, got an array");
    TEST_FAILS(parse(&c,
                     "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":128,"
                     "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":3,\"vocab_size\":100}"),
               GQ_ERR_FORMAT, "not a multiple of num_key_value_heads 3");
    TEST_FAILS(parse(&c, "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":128,"
                         "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":100,"
                         "\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4}}"),
               GQ_ERR_UNSUPPORTED, "rope_scaling type \"yarn\" is not supported");
    TEST_FAILS(parse(&c,
                     "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":128,"
                     "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":100,\"hidden_act\":\"gelu\"}"),
               GQ_ERR_UNSUPPORTED, "hidden_act \"gelu\" is not supported");
    TEST_FAILS(gq_config_load(&c, "/nonexistent/dir/config.json"), GQ_ERR_IO,
               "/nonexistent/dir/config.json: cannot open");
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

/* ---- the families of gq/arch.h ---- */

/* The number of elements of every tensor in a safetensors file (from its header). */
static int64_t st_elements(const char *path) {
    FILE *f = fopen(path, "rb");
    unsigned char len8[8];
    int64_t total = -1;
    if (!f) return -1;
    if (fread(len8, 1, 8, f) == 8) {
        uint64_t n = 0;
        for (int i = 7; i >= 0; i--) n = n << 8 | len8[i];
        char *hdr = n < (1u << 24) ? malloc(n) : NULL;
        json_t *j = hdr && fread(hdr, 1, n, f) == n ? json_loadb(hdr, n, 0, NULL) : NULL;
        const char *key;
        json_t *t;
        if (j) total = 0;
        json_object_foreach(j, key, t) {
            if (!strcmp(key, "__metadata__")) continue;
            int64_t e = 1;
            size_t i;
            json_t *d;
            json_array_foreach(json_object_get(t, "shape"), i, d) e *= json_integer_value(d);
            total += e;
        }
        json_decref(j);
        free(hdr);
    }
    fclose(f);
    return total;
}

typedef struct {
    const char *dir;
    gq_arch_id id;
    const char *model_type;
    gq_act_kind act;
    double eps;
    int head_dim, rot_dim, window;
    const char *sliding; /* per layer, '1' = sliding */
    float attn_cap, final_cap, qscale;
    int experts, top_k, norm_topk, moe_inter;
    const char *sparse; /* per layer, '1' = MoE */
    int attention_bias, mlp_bias;
} family_case;

static void check_family(const family_case *f) {
    gq_config c;
    char path[512], layers[64];
    snprintf(path, sizeof path, "%s/%s/config.json", gq_test_data("families"), f->dir);
    TEST_OK(gq_config_load(&c, path), "%s: load", f->dir);
    const gq_arch *a = gq_arch_get(f->id);
    TEST_CHECK(c.arch_id == f->id && !strcmp(c.arch, a->hf_arch) && !strcmp(c.model_type, f->model_type),
               "%s: family %d %s %s", f->dir, (int)c.arch_id, c.arch, c.model_type);
    TEST_CHECK(c.act == f->act, "%s: act %d", f->dir, (int)c.act);
    TEST_NEAR(c.rms_eps, f->eps, 1e-12, "%s: eps", f->dir);
    TEST_CHECK(c.hidden == 32 && c.n_heads == 4 && c.n_kv_heads == 2 && c.vocab == 8192 && c.tie_word_embeddings &&
                   c.dtype == GQ_DT_BF16 && c.bos_id == 1 && c.eos_id == 2,
               "%s: common shape", f->dir);
    TEST_CHECK(c.head_dim == f->head_dim && c.rot_dim == f->rot_dim, "%s: head_dim %d rot %d", f->dir, c.head_dim,
               c.rot_dim);
    for (int l = 0; l < c.n_layers && l < 63; l++) layers[l] = (char)('0' + c.layer_sliding[l]);
    layers[c.n_layers < 63 ? c.n_layers : 63] = 0;
    TEST_CHECK(c.sliding_window == f->window && !strcmp(layers, f->sliding), "%s: window %d layers %s", f->dir,
               c.sliding_window, layers);
    TEST_CHECK(c.attn_softcap == f->attn_cap && c.final_softcap == f->final_cap && c.query_pre_attn_scalar == f->qscale,
               "%s: softcaps %g %g scale %g", f->dir, (double)c.attn_softcap, (double)c.final_softcap,
               (double)c.query_pre_attn_scalar);
    TEST_CHECK(c.n_experts == f->experts && c.top_k == f->top_k && c.norm_topk == f->norm_topk &&
                   c.moe_inter == f->moe_inter,
               "%s: experts %d top %d norm %d ffn %d", f->dir, c.n_experts, c.top_k, c.norm_topk, c.moe_inter);
    for (int l = 0; l < c.n_layers && l < 63; l++) layers[l] = (char)('0' + c.layer_moe[l]);
    layers[c.n_layers < 63 ? c.n_layers : 63] = 0;
    TEST_CHECK(!strcmp(layers, f->sparse), "%s: sparse layers %s", f->dir, layers);
    TEST_CHECK(c.attention_bias == f->attention_bias && c.mlp_bias == f->mlp_bias, "%s: biases %d %d", f->dir,
               c.attention_bias, c.mlp_bias);
    snprintf(path, sizeof path, "%s/%s/model.safetensors", gq_test_data("families"), f->dir);
    int64_t want = st_elements(path);
    TEST_CHECK(want > 0 && gq_config_param_count(&c) == want, "%s: params %lld, model.safetensors holds %lld", f->dir,
               (long long)gq_config_param_count(&c), (long long)want);
}

/* tests/data/families: every config.json, and the parameter count against its model.safetensors. */
static void test_families(void) {
    TEST_BEGIN("families");
    static const family_case cases[] = {
        {"qwen2", GQ_ARCH_QWEN2, "qwen2", GQ_ACT_SILU, 1e-6, 8, 8, 0, "00", 0, 0, 0, 0, 0, 0, 0, "00", 0, 0},
        {"qwen3", GQ_ARCH_QWEN3, "qwen3", GQ_ACT_SILU, 1e-6, 16, 16, 0, "00", 0, 0, 0, 0, 0, 0, 0, "00", 0, 0},
        {"mistral", GQ_ARCH_MISTRAL, "mistral", GQ_ACT_SILU, 1e-5, 8, 8, 32, "11", 0, 0, 0, 0, 0, 0, 0, "00", 0, 0},
        {"mixtral", GQ_ARCH_MIXTRAL, "mixtral", GQ_ACT_SILU, 1e-5, 8, 8, 0, "00", 0, 0, 0, 4, 2, 1, 64, "11", 0, 0},
        {"mixtral-fused", GQ_ARCH_MIXTRAL, "mixtral", GQ_ACT_SILU, 1e-5, 8, 8, 0, "00", 0, 0, 0, 4, 2, 1, 64, "11", 0,
         0},
        {"qwen3_moe", GQ_ARCH_QWEN3_MOE, "qwen3_moe", GQ_ACT_SILU, 1e-6, 16, 16, 0, "000", 0, 0, 0, 8, 2, 1, 32, "101",
         0, 0},
        {"qwen3_moe-fused", GQ_ARCH_QWEN3_MOE, "qwen3_moe", GQ_ACT_SILU, 1e-6, 16, 16, 0, "000", 0, 0, 0, 8, 2, 1, 32,
         "101", 0, 0},
        {"gemma2", GQ_ARCH_GEMMA2, "gemma2", GQ_ACT_GELU_TANH, 1e-6, 16, 16, 32, "101", 3, 8, 24, 0, 0, 0, 0, "000", 0,
         0},
        {"phi3", GQ_ARCH_PHI3, "phi3", GQ_ACT_SILU, 1e-5, 8, 8, 48, "11", 0, 0, 0, 0, 0, 0, 0, "00", 0, 0},
        {"starcoder2", GQ_ARCH_STARCODER2, "starcoder2", GQ_ACT_GELU_TANH, 1e-5, 8, 8, 32, "11", 0, 0, 0, 0, 0, 0, 0,
         "00", 1, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) check_family(&cases[i]);

    gq_config c;
    char s[512];
    TEST_OK(gq_config_load(&c, gq_test_data("families/gemma2")), "gemma2 from its directory");
    gq_config_summary(&c, s, sizeof s);
    TEST_CHECK(strstr(s, "Gemma2ForCausalLM: hidden 32,") == s && strstr(s, ", gelu_tanh, window 32 on 2/3 layers") &&
                   strstr(s, "attn softcap 3, final softcap 8, scale 24^-1/2"),
               "gemma2 summary: %s", s);
    TEST_OK(gq_config_load(&c, gq_test_data("families/qwen3_moe")), "qwen3_moe");
    gq_config_summary(&c, s, sizeof s);
    TEST_CHECK(strstr(s, ", 8 experts top-2 renormalised, expert ffn 32, sparse 2/3 layers"), "qwen3_moe summary: %s",
               s);
    TEST_OK(gq_config_load(&c, gq_test_data("families/starcoder2")), "starcoder2");
    gq_config_summary(&c, s, sizeof s);
    TEST_CHECK(strstr(s, "bias qkvo+mlp"), "starcoder2 summary: %s", s);
    gq_config_summary(&c, s, 40);
    TEST_CHECK(strlen(s) == 39, "summary truncates to the buffer");
}

/* config.json of `arch` (a class name) with a base shape and `extra` spliced in (a later
 * duplicate key wins in jansson). */
static int parse_fam(gq_config *c, const char *arch, const char *extra) {
    char buf[2048];
    snprintf(buf, sizeof buf,
             "{\"architectures\":[\"%s\"],\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":2,"
             "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"vocab_size\":100%s}",
             arch, extra);
    return parse(c, buf);
}

static void test_family_arch_act(void) {
    TEST_BEGIN("family and activation");
    gq_config c;
    char known[1024], want[1200];
    TEST_FAILS(parse(&c, "{\"model_type\":\"gpt2\",\"n_embd\":64}"), GQ_ERR_UNSUPPORTED,
               "cfg.json: model_type \"gpt2\" is not supported (supported: ");
    gq_arch_list(known, sizeof known);
    snprintf(want, sizeof want, "(supported: %s)", known);
    TEST_CHECK(strstr(gq_errmsg(), want) != NULL, "the message lists the known families: %s", gq_errmsg());
    for (int i = 0; i < GQ_ARCH_COUNT; i++)
        TEST_CHECK(strstr(known, gq_arch_get((gq_arch_id)i)->hf_arch) &&
                       strstr(known, gq_arch_get((gq_arch_id)i)->model_type),
                   "gq_arch_list names family %d", i);
    TEST_FAILS(parse(&c, "{\"architectures\":[\"Gemma3ForCausalLM\"],\"model_type\":\"gemma3_text\"}"),
               GQ_ERR_UNSUPPORTED, "architecture \"Gemma3ForCausalLM\" (model_type \"gemma3_text\") is not supported");
    TEST_FAILS(parse(&c, "{\"architectures\":[\"Qwen2ForSequenceClassification\"],\"model_type\":\"qwen2\"}"),
               GQ_ERR_UNSUPPORTED, "architecture \"Qwen2ForSequenceClassification\" (model_type \"qwen2\")");

    /* model_type alone picks the family; c->arch is its class name */
    TEST_OK(parse(&c,
                  "{\"model_type\":\"qwen3_moe\",\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":2,"
                  "\"num_attention_heads\":4,\"vocab_size\":100,\"num_experts\":4,\"num_experts_per_tok\":1}"),
            "model_type qwen3_moe");
    TEST_CHECK(c.arch_id == GQ_ARCH_QWEN3_MOE && !strcmp(c.arch, "Qwen3MoeForCausalLM") &&
                   !strcmp(c.model_type, "qwen3_moe"),
               "family from model_type: %s", c.arch);
    TEST_OK(parse_fam(&c, "Phi3ForCausalLM", ""), "no model_type");
    TEST_CHECK(c.arch_id == GQ_ARCH_PHI3 && !strcmp(c.model_type, "phi3"), "model_type from the family");

    /* activations: Gemma-2 reads hidden_activation (its transformers class ignores hidden_act) */
    TEST_OK(parse_fam(&c, "Gemma2ForCausalLM", ",\"hidden_activation\":\"gelu_pytorch_tanh\",\"hidden_act\":\"silu\""),
            "gemma2 hidden_activation");
    TEST_CHECK(c.act == GQ_ACT_GELU_TANH, "hidden_activation wins");
    TEST_OK(parse_fam(&c, "Gemma2ForCausalLM", ""), "gemma2 default act");
    TEST_CHECK(c.act == GQ_ACT_GELU_TANH, "gemma2 default gelu_tanh");
    TEST_FAILS(parse_fam(&c, "Gemma2ForCausalLM", ",\"hidden_activation\":\"gelu\""), GQ_ERR_UNSUPPORTED,
               "hidden_activation \"gelu\" is not supported (silu; gelu_pytorch_tanh");
    TEST_FAILS(parse_fam(&c, "Gemma2ForCausalLM", ",\"hidden_activation\":7"), GQ_ERR_FORMAT,
               "hidden_activation: expected a string, got an integer");
    static const char *const tanh_names[] = {"gelu_pytorch_tanh", "gelu_tanh", "gelu_new", "gelu_fast"};
    for (int i = 0; i < 4; i++) {
        char extra[64];
        snprintf(extra, sizeof extra, ",\"hidden_act\":\"%s\"", tanh_names[i]);
        TEST_OK(parse_fam(&c, "Starcoder2ForCausalLM", extra), "%s", tanh_names[i]);
        TEST_CHECK(c.act == GQ_ACT_GELU_TANH, "%s is gelu_tanh", tanh_names[i]);
    }
    TEST_OK(parse_fam(&c, "Starcoder2ForCausalLM", ""), "starcoder2 default act");
    TEST_CHECK(c.act == GQ_ACT_GELU_TANH, "starcoder2 default gelu_tanh");
    TEST_FAILS(parse_fam(&c, "Starcoder2ForCausalLM", ",\"hidden_act\":\"gelu\""), GQ_ERR_UNSUPPORTED,
               "hidden_act \"gelu\" is not supported");
    TEST_OK(parse_fam(&c, "Qwen2ForCausalLM", ",\"hidden_act\":\"silu\""), "qwen2 silu");
    TEST_CHECK(c.act == GQ_ACT_SILU, "silu");

    /* norm eps: StarCoder2's norm_epsilon (its class ignores rms_norm_eps) */
    TEST_OK(parse_fam(&c, "Starcoder2ForCausalLM", ",\"norm_epsilon\":0.001,\"rms_norm_eps\":0.5"), "norm_epsilon");
    TEST_NEAR(c.rms_eps, 1e-3, 1e-9, "norm_epsilon read");
    TEST_FAILS(parse_fam(&c, "Starcoder2ForCausalLM", ",\"norm_epsilon\":0"), GQ_ERR_FORMAT,
               "\"norm_epsilon\" must be a number > 0");
    TEST_OK(parse_fam(&c, "MixtralForCausalLM", ""), "mixtral defaults");
    TEST_NEAR(c.rms_eps, 1e-5, 1e-12, "mixtral default eps 1e-5");
}

static void test_family_window(void) {
    TEST_BEGIN("sliding window");
    gq_config c;
    TEST_OK(
        parse_fam(&c, "Qwen2ForCausalLM", ",\"use_sliding_window\":true,\"sliding_window\":16,\"max_window_layers\":1"),
        "qwen2 window on layers >= 1");
    TEST_CHECK(c.sliding_window == 16 && !c.layer_sliding[0] && c.layer_sliding[1], "qwen2 window %d: %d %d",
               c.sliding_window, c.layer_sliding[0], c.layer_sliding[1]);
    TEST_OK(parse_fam(&c, "Qwen2ForCausalLM",
                      ",\"use_sliding_window\":true,\"sliding_window\":16,\"max_window_layers\":1,"
                      "\"layer_types\":[\"sliding_attention\",\"full_attention\"]"),
            "qwen2 layer_types");
    TEST_CHECK(c.sliding_window == 16 && c.layer_sliding[0] && !c.layer_sliding[1], "layer_types win");
    TEST_OK(parse_fam(&c, "Qwen2ForCausalLM",
                      ",\"use_sliding_window\":false,\"sliding_window\":16,"
                      "\"max_window_layers\":0"),
            "qwen2 window off");
    TEST_CHECK(c.sliding_window == 0 && !c.layer_sliding[0] && !c.layer_sliding[1], "no use_sliding_window");
    TEST_OK(parse_fam(&c, "Qwen3ForCausalLM", ",\"use_sliding_window\":true"), "qwen3 default window and layers");
    TEST_CHECK(c.sliding_window == 0 && !c.layer_sliding[1], "4096 from layer 28: none of 2 layers");
    TEST_OK(parse_fam(&c, "Qwen3ForCausalLM", ",\"use_sliding_window\":true,\"max_window_layers\":0"), "qwen3 all");
    TEST_CHECK(c.sliding_window == 4096 && c.layer_sliding[0] && c.layer_sliding[1], "default window 4096");
    TEST_OK(parse_fam(&c, "Qwen3MoeForCausalLM",
                      ",\"use_sliding_window\":true,\"sliding_window\":8,"
                      "\"max_window_layers\":1,\"num_experts\":4,\"num_experts_per_tok\":2"),
            "qwen3_moe window");
    TEST_CHECK(c.sliding_window == 8 && c.layer_sliding[0] && c.layer_sliding[1],
               "qwen3_moe: every layer (5.17 has no max_window_layers for it)");

    /* Gemma-2: layer_types, else the even layers */
    TEST_OK(parse_fam(&c, "Gemma2ForCausalLM", ",\"num_hidden_layers\":4,\"sliding_window\":8"), "gemma2 default");
    TEST_CHECK(c.sliding_window == 8 && c.layer_sliding[0] && !c.layer_sliding[1] && c.layer_sliding[2] &&
                   !c.layer_sliding[3],
               "gemma2 even layers slide");
    TEST_OK(parse_fam(&c, "Gemma2ForCausalLM", ",\"sliding_window\":null"), "gemma2 null window");
    TEST_CHECK(c.sliding_window == 0 && !c.layer_sliding[0], "null: none");
    TEST_FAILS(parse_fam(&c, "Gemma2ForCausalLM", ",\"layer_types\":[\"sliding_attention\"]"), GQ_ERR_FORMAT,
               "layer_types has 1 entries for num_hidden_layers 2");
    TEST_FAILS(parse_fam(&c, "Gemma2ForCausalLM", ",\"layer_types\":[\"sliding_attention\",\"chunked_attention\"]"),
               GQ_ERR_UNSUPPORTED,
               "layer_types[1] \"chunked_attention\" is not supported (sliding_attention, full_attention)");
    TEST_FAILS(parse_fam(&c, "Gemma2ForCausalLM", ",\"layer_types\":[\"full_attention\",3]"), GQ_ERR_FORMAT,
               "layer_types[1]: expected a string, got an integer");
    TEST_FAILS(parse_fam(&c, "Gemma2ForCausalLM", ",\"layer_types\":\"sliding_attention\""), GQ_ERR_FORMAT,
               "layer_types: expected an array of strings, got a string");
    TEST_FAILS(parse_fam(&c, "Qwen2ForCausalLM", ",\"layer_types\":[\"full_attention\"]"), GQ_ERR_FORMAT,
               "layer_types has 1 entries for num_hidden_layers 2");

    /* every layer: Mistral (absent: 4096, as MistralConfig), Phi-3, StarCoder2, Mixtral */
    TEST_OK(parse_fam(&c, "MistralForCausalLM", ""), "mistral without sliding_window");
    TEST_CHECK(c.sliding_window == 4096 && c.layer_sliding[0] && c.layer_sliding[1], "MistralConfig default 4096");
    TEST_OK(parse_fam(&c, "MixtralForCausalLM", ""), "mixtral without sliding_window");
    TEST_CHECK(c.sliding_window == 0 && !c.layer_sliding[0], "MixtralConfig default None");
    TEST_OK(parse_fam(&c, "Phi3ForCausalLM", ",\"sliding_window\":2047"), "phi3 window");
    TEST_CHECK(c.sliding_window == 2047 && c.layer_sliding[0] && c.layer_sliding[1], "phi3 all layers");
    TEST_FAILS(parse_fam(&c, "MistralForCausalLM", ",\"sliding_window\":0"), GQ_ERR_FORMAT,
               "\"sliding_window\" must be positive or null, got 0");
    TEST_FAILS(parse_fam(&c, "Starcoder2ForCausalLM", ",\"sliding_window\":-4"), GQ_ERR_FORMAT,
               "field \"sliding_window\": expected an integer in [0, 1e9], got -4");
    /* Llama: ignored (with a warning) */
    TEST_OK(parse_fam(&c, "LlamaForCausalLM", ",\"sliding_window\":16"), "llama sliding_window");
    TEST_CHECK(c.sliding_window == 0 && !c.layer_sliding[0], "llama: no window");
}

static void test_family_fields(void) {
    TEST_BEGIN("family fields");
    gq_config c;
    /* Gemma-2: soft-caps (null = none; absent = Gemma2Config's 50 / 30), query_pre_attn_scalar (absent: 256) */
    TEST_OK(parse_fam(&c, "Gemma2ForCausalLM", ",\"head_dim\":16"), "gemma2 defaults");
    TEST_CHECK(c.attn_softcap == 50 && c.final_softcap == 30 && c.query_pre_attn_scalar == 256,
               "Gemma2Config defaults %g %g %g", (double)c.attn_softcap, (double)c.final_softcap,
               (double)c.query_pre_attn_scalar);
    TEST_OK(
        parse_fam(&c, "Gemma2ForCausalLM",
                  ",\"attn_logit_softcapping\":null,\"final_logit_softcapping\":null,\"query_pre_attn_scalar\":144"),
        "gemma2 null caps");
    TEST_CHECK(c.attn_softcap == 0 && c.final_softcap == 0 && c.query_pre_attn_scalar == 144, "null caps: none");
    TEST_CHECK(c.head_dim == 256, "Gemma2Config head_dim default 256, got %d", c.head_dim);
    TEST_FAILS(parse_fam(&c, "Gemma2ForCausalLM", ",\"attn_logit_softcapping\":0"), GQ_ERR_FORMAT,
               "\"attn_logit_softcapping\" must be > 0 (or null: no cap), got 0");
    TEST_FAILS(parse_fam(&c, "Gemma2ForCausalLM", ",\"query_pre_attn_scalar\":-1"), GQ_ERR_FORMAT,
               "\"query_pre_attn_scalar\" must be > 0");
    TEST_OK(parse_fam(&c, "MistralForCausalLM", ",\"attn_logit_softcapping\":5"), "other families: no caps");
    TEST_CHECK(c.attn_softcap == 0 && c.final_softcap == 0 && c.query_pre_attn_scalar == 0, "not Gemma-2: 0");
    /* head_dim: absent -> the class default (Qwen3 128) or hidden / heads; null -> hidden / heads */
    TEST_OK(parse_fam(&c, "Qwen3ForCausalLM", ""), "qwen3 without head_dim");
    TEST_CHECK(c.head_dim == 128 && c.rot_dim == 128, "Qwen3Config head_dim 128, got %d", c.head_dim);
    TEST_OK(parse_fam(&c, "Qwen3ForCausalLM", ",\"head_dim\":null"), "qwen3 null head_dim");
    TEST_CHECK(c.head_dim == 16, "null: hidden / heads");
    TEST_OK(parse_fam(&c, "MixtralForCausalLM", ",\"head_dim\":null"), "mixtral null head_dim");
    TEST_CHECK(c.head_dim == 16, "null: hidden / heads");

    /* partial rotary */
    TEST_OK(parse_fam(&c, "Phi3ForCausalLM", ",\"partial_rotary_factor\":0.75"), "partial rotary 0.75 (top level)");
    TEST_CHECK(c.head_dim == 16 && c.rot_dim == 12, "rot %d", c.rot_dim);
    TEST_OK(parse_fam(&c, "Phi3ForCausalLM",
                      ",\"partial_rotary_factor\":0.75,\"rope_parameters\":{\"rope_type\":"
                      "\"default\",\"rope_theta\":10000.0,\"partial_rotary_factor\":0.5}"),
            "partial rotary in rope_parameters");
    TEST_CHECK(c.rot_dim == 8, "rope_parameters' factor first: rot %d", c.rot_dim);
    TEST_FAILS(
        parse_fam(&c, "Phi3ForCausalLM", ",\"partial_rotary_factor\":0.5625"), GQ_ERR_FORMAT,
        "partial_rotary_factor 0.5625 x head_dim 16 = 9 rotary dims: expected a factor in (0, 1] giving an even");
    TEST_FAILS(parse_fam(&c, "Phi3ForCausalLM", ",\"partial_rotary_factor\":0.3"), GQ_ERR_FORMAT, "= 4.8 rotary dims");
    TEST_FAILS(parse_fam(&c, "Phi3ForCausalLM", ",\"partial_rotary_factor\":0.0625"), GQ_ERR_FORMAT, "= 1 rotary dims");
    TEST_FAILS(parse_fam(&c, "Phi3ForCausalLM", ",\"partial_rotary_factor\":0"), GQ_ERR_FORMAT,
               "partial_rotary_factor 0 x head_dim 16");
    TEST_FAILS(parse_fam(&c, "LlamaForCausalLM", ",\"partial_rotary_factor\":1.5"), GQ_ERR_FORMAT,
               "partial_rotary_factor 1.5 x head_dim 16");
    TEST_OK(parse_fam(&c, "LlamaForCausalLM", ""), "llama");
    TEST_CHECK(c.rot_dim == 16 && c.arch_id == GQ_ARCH_LLAMA && !strcmp(c.model_type, "llama"), "full rotary");

    /* biases: StarCoder2's use_bias sets both (attention_bias / mlp_bias ignored, as its class) */
    TEST_OK(parse_fam(&c, "Starcoder2ForCausalLM", ",\"use_bias\":false,\"attention_bias\":true"), "use_bias false");
    TEST_CHECK(!c.attention_bias && !c.mlp_bias, "no biases");
    int64_t nb = gq_config_param_count(&c);
    TEST_OK(parse_fam(&c, "Starcoder2ForCausalLM", ""), "use_bias default");
    TEST_CHECK(c.attention_bias && c.mlp_bias, "use_bias default true");
    /* q, k, v, o + c_fc, c_proj biases per layer: 64 + 32 + 32 + 64 + 128 + 64 */
    TEST_CHECK(gq_config_param_count(&c) - nb == 2 * (64 + 2 * 32 + 64 + 128 + 64), "bias params %lld",
               (long long)(gq_config_param_count(&c) - nb));
    TEST_OK(parse_fam(&c, "Qwen2ForCausalLM", ""), "qwen2");
    TEST_CHECK(!c.attention_bias && !c.mlp_bias && c.rot_dim == 16, "qwen2: q/k/v biases come from the family");
}

static void test_family_moe(void) {
    TEST_BEGIN("experts");
    gq_config c;
    /* published-style Qwen3-MoE (Qwen3-30B-A3B's keys): num_experts, no num_local_experts, no layer_types */
    TEST_OK(parse(&c, "{\"architectures\":[\"Qwen3MoeForCausalLM\"],\"model_type\":\"qwen3_moe\",\"hidden_size\":64,"
                      "\"intermediate_size\":96,\"moe_intermediate_size\":24,\"num_hidden_layers\":4,"
                      "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"head_dim\":32,\"vocab_size\":100,"
                      "\"num_experts\":16,\"num_experts_per_tok\":4,\"norm_topk_prob\":true,\"decoder_sparse_step\":1,"
                      "\"mlp_only_layers\":[],\"max_window_layers\":48,\"use_sliding_window\":false,"
                      "\"sliding_window\":null,\"rope_theta\":1000000.0,\"rope_scaling\":null,\"rms_norm_eps\":1e-06,"
                      "\"router_aux_loss_coef\":0.001,\"output_router_logits\":false,\"torch_dtype\":\"bfloat16\","
                      "\"tie_word_embeddings\":false,\"attention_bias\":false}"),
            "published Qwen3-MoE config");
    TEST_CHECK(c.n_experts == 16 && c.top_k == 4 && c.norm_topk && c.moe_inter == 24 && c.intermediate == 96,
               "experts %d top %d ffn %d", c.n_experts, c.top_k, c.moe_inter);
    TEST_CHECK(c.layer_moe[0] && c.layer_moe[1] && c.layer_moe[2] && c.layer_moe[3] && !c.sliding_window,
               "every layer sparse");
    /* embed + head, final norm, per layer: attention (q 128, kv 64) + q/k norms + 2 norms + router + experts */
    int64_t layer = 64 * 128 + 2 * 64 * 64 + 128 * 64 + 2 * 32 + 2 * 64 + 16 * 64 + 16 * 3 * 64 * 24;
    TEST_CHECK(gq_config_param_count(&c) == 2 * 100 * 64 + 64 + 4 * layer, "params %lld",
               (long long)gq_config_param_count(&c));
    TEST_OK(parse_fam(&c, "Qwen3MoeForCausalLM", ",\"num_hidden_layers\":4,\"decoder_sparse_step\":2"), "step 2");
    TEST_CHECK(!c.layer_moe[0] && c.layer_moe[1] && !c.layer_moe[2] && c.layer_moe[3], "(l + 1) %% 2 == 0 sparse");
    TEST_CHECK(c.n_experts == 128 && c.top_k == 8 && !c.norm_topk && c.moe_inter == 768,
               "Qwen3MoeConfig defaults: %d experts top %d norm %d ffn %d", c.n_experts, c.top_k, c.norm_topk,
               c.moe_inter);
    TEST_OK(parse_fam(&c, "MixtralForCausalLM",
                      ",\"num_local_experts\":8,\"num_experts_per_tok\":2,"
                      "\"router_jitter_noise\":0.1,\"norm_topk_prob\":false"),
            "mixtral");
    TEST_CHECK(c.n_experts == 8 && c.top_k == 2 && c.norm_topk && c.moe_inter == 128 && c.layer_moe[0] &&
                   c.layer_moe[1],
               "mixtral: always renormalised, intermediate_size per expert");
    TEST_OK(parse_fam(&c, "LlamaForCausalLM", ",\"num_experts\":8"), "dense family");
    TEST_CHECK(c.n_experts == 0 && !c.layer_moe[0], "experts only for MoE families");

    TEST_FAILS(parse_fam(&c, "MixtralForCausalLM", ",\"num_local_experts\":4,\"num_experts_per_tok\":5"), GQ_ERR_FORMAT,
               "\"num_experts_per_tok\" is 5: expected 1 to the 4 experts");
    TEST_FAILS(parse_fam(&c, "MixtralForCausalLM", ",\"num_local_experts\":4,\"num_experts_per_tok\":0"), GQ_ERR_FORMAT,
               "\"num_experts_per_tok\" is 0");
    TEST_FAILS(parse_fam(&c, "Qwen3MoeForCausalLM", ",\"num_experts\":0"), GQ_ERR_FORMAT,
               "\"num_experts\" is 0: expected 1 to gq's limit of 1024");
    TEST_FAILS(parse_fam(&c, "Qwen3MoeForCausalLM", ",\"num_local_experts\":8,\"num_experts\":16"), GQ_ERR_FORMAT,
               "num_local_experts 8 and num_experts 16 disagree");
    TEST_FAILS(parse_fam(&c, "Qwen3MoeForCausalLM",
                         ",\"num_experts\":8,\"num_experts_per_tok\":2,"
                         "\"moe_intermediate_size\":0"),
               GQ_ERR_FORMAT, "\"moe_intermediate_size\" is 0");
    TEST_FAILS(parse_fam(&c, "Qwen3MoeForCausalLM",
                         ",\"num_experts\":1024,\"num_experts_per_tok\":2,"
                         "\"moe_intermediate_size\":1048576"),
               GQ_ERR_FORMAT, "beyond gq's limit");
    TEST_FAILS(parse_fam(&c, "Qwen3MoeForCausalLM", ",\"decoder_sparse_step\":0"), GQ_ERR_FORMAT,
               "\"decoder_sparse_step\" must be positive, got 0");
    TEST_FAILS(parse_fam(&c, "Qwen3MoeForCausalLM", ",\"mlp_only_layers\":[2]"), GQ_ERR_FORMAT,
               "mlp_only_layers[0]: expected a layer index in [0, 2), got one outside");
    TEST_FAILS(parse_fam(&c, "Qwen3MoeForCausalLM", ",\"mlp_only_layers\":[\"1\"]"), GQ_ERR_FORMAT,
               "mlp_only_layers[0]: expected a layer index in [0, 2), got a string");
    TEST_FAILS(parse_fam(&c, "Qwen3MoeForCausalLM", ",\"mlp_only_layers\":1"), GQ_ERR_FORMAT,
               "mlp_only_layers: expected an array of layer indices, got an integer");
}

int main(void) {
    test_codellama();
    test_pycoder();
    test_variants();
    test_errors();
    test_absurd();
    test_families();
    test_family_arch_act();
    test_family_window();
    test_family_fields();
    test_family_moe();
    return TEST_REPORT();
}

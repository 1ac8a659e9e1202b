/*
 * model_quant.c -- load a GPTQ-quantized linear (AutoGPTQ layout: qweight,
 * qzeros, scales, g_idx; gptq-reference.md §2) and dequantize it to f32.
 * Kept apart from model.c so the rest links without the pack module.
 */
#include "gq/model.h"

int gq_model_load_qlinear(const gq_model *m, int layer, gq_linear_id id, int rows, int cols, float **w);

int gq_model_load_qlinear(const gq_model *m, int layer, gq_linear_id id, int rows, int cols, float **w) {
    *w = NULL;
    return gq_err(GQ_ERR_UNSUPPORTED, "%s: layer %d %s: quantized checkpoints cannot be loaded yet", m->dir, layer,
                  gq_linear_names[id]);
}

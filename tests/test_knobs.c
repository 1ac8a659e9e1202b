/*
 * test_knobs.c -- the environment knobs (gq/knobs.h): a knob that changes the numbers is part of
 * the --resume fingerprint (gq_knobs_str numbers_only), a timing knob only of the settings printed,
 * a bad value is ignored (with a warning), and the defaults print nothing.
 */
#include <stdlib.h>
#include <string.h>

#include "gq/knobs.h"
#include "test.h"

int main(void) {
    gq_log_set_level(GQ_LOG_ERROR); /* (the bad values' warnings) */
    TEST_BEGIN("knobs");
    /* a knob that changes the numbers: in the fingerprint; a bad value is ignored */
    char kb[512];
    setenv("GQ_CUDA_GPTQ_TF32", "1", 1);
    gq_knobs_reload();
    gq_knobs_str(kb, sizeof kb, 1);
    TEST_CHECK(gq_knobs_get()->cuda_gptq_tf32 == 1 && strstr(kb, "GQ_CUDA_GPTQ_TF32=1"),
               "GQ_CUDA_GPTQ_TF32=1 read and in the fingerprint (\"%s\")", kb);
    setenv("GQ_CUDA_GPTQ_TF32", "2", 1);
    gq_knobs_reload();
    gq_knobs_str(kb, sizeof kb, 1);
    TEST_CHECK(gq_knobs_get()->cuda_gptq_tf32 == 0 && !strstr(kb, "TF32"), "GQ_CUDA_GPTQ_TF32=2 ignored (\"%s\")", kb);
    unsetenv("GQ_CUDA_GPTQ_TF32");
    /* a timing knob: in the settings printed, not in the fingerprint; the defaults print nothing */
    setenv("GQ_CUDA_W4_U", "4", 1);
    gq_knobs_reload();
    gq_knobs_str(kb, sizeof kb, 0);
    TEST_CHECK(gq_knobs_get()->cuda_w4_u == 4 && strstr(kb, "GQ_CUDA_W4_U=4"), "GQ_CUDA_W4_U=4 read (\"%s\")", kb);
    gq_knobs_str(kb, sizeof kb, 1);
    TEST_CHECK(!strstr(kb, "W4_U"), "GQ_CUDA_W4_U not in the fingerprint (\"%s\")", kb);
    setenv("GQ_CUDA_W4_U", "5", 1);
    gq_knobs_reload();
    TEST_CHECK(gq_knobs_get()->cuda_w4_u == 8, "GQ_CUDA_W4_U=5 ignored: %d", gq_knobs_get()->cuda_w4_u);
    unsetenv("GQ_CUDA_W4_U");
    gq_knobs_reload();
    gq_knobs_str(kb, sizeof kb, 0);
    TEST_CHECK(!strstr(kb, "GQ_LOAD_AHEAD") && !strstr(kb, "GQ_CUDA_PDL") && !strstr(kb, "W4_U"),
               "the defaults (GQ_LOAD_AHEAD=auto, GQ_CUDA_PDL=1, GQ_CUDA_W4_U=8) are not printed (\"%s\")", kb);
    return TEST_REPORT();
}

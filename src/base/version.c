/* version.c -- gq's version. The Makefile passes GQ_VERSION (its VERSION) and GQ_GIT
 * (git describe) to this file alone, and rebuilds it when they change. */
#include "gq/common.h"

#ifndef GQ_VERSION
#define GQ_VERSION "unknown"
#endif
#ifndef GQ_GIT
#define GQ_GIT "unknown"
#endif

const char *gq_version(void) { return GQ_VERSION; }
const char *gq_version_git(void) { return GQ_GIT; }

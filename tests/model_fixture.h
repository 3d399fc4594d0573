// SPDX-License-Identifier: MIT
// model_fixture.h -- test models made on demand by tools/lp_genmodel into
// LP_WORK_DIR (build/testdata), shared between tests: a folder is generated
// into a temporary name and renamed into place, so tests running in
// parallel never see half a model.
#ifndef LP_MODEL_FIXTURE_H
#define LP_MODEL_FIXTURE_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static inline const char *lp_fixture_env(const char *name, const char *fallback) {
    const char *v = getenv(name);
    return v && *v ? v : fallback;
}

// Makes (once) the model `name` from lp_genmodel arguments `gen_args`
// (without --out); writes its folder path into dir[dir_bytes]. Returns 0 on
// success.
static inline int lp_fixture_model(const char *name, const char *gen_args, char *dir,
                                   size_t dir_bytes) {
    const char *work = lp_fixture_env("LP_WORK_DIR", "build/testdata");
    const char *tools = lp_fixture_env("LP_TOOLS_DIR", "build");
    mkdir(work, 0755);
    snprintf(dir, dir_bytes, "%s/%s", work, name);
    // the folder appears whole (renamed into place) or not at all
    struct stat sb;
    char probe[1200];
    snprintf(probe, sizeof probe, "%s", dir);
    if (stat(probe, &sb) == 0) return 0;
    char tmp[1100], cmd[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", dir, (int)getpid());
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && '%s/lp_genmodel' --out '%s' %s >/dev/null", tmp,
             tools, tmp, gen_args);
    if (system(cmd) != 0) {
        fprintf(stderr, "fixture: '%s' failed\n", cmd);
        return -1;
    }
    if (rename(tmp, dir) != 0) { // another test made it first
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
        if (system(cmd) != 0) return -1;
    }
    return stat(probe, &sb) == 0 ? 0 : -1;
}


#endif

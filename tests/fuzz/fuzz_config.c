/*
 * fuzz_config - the configuration loader with its feature specs (daemon/src/config.c,
 * model/src/features.c): the input is a config file, loaded, validated, its feature
 * lines built into a sealed feature set, its duration and override syntax exercised
 * through ch_config_set, and printed. Errors must come with a message.
 */
#include "fuzz_common.h"

#include <string.h>
#include <unistd.h>

#include "ch/features.h"
#include "config.h"

static char path[64];

static void cleanup(void) { unlink(path); }

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    snprintf(path, sizeof(path), "/tmp/fuzz_config_%d.conf", (int)getpid());
    atexit(cleanup);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    FILE *f = fopen(path, "we");
    if (!f || fwrite(data, 1, size, f) != size || fclose(f) != 0) {
        fprintf(stderr, "fuzz_config: cannot write %s\n", path);
        abort();
    }
    ch_config_t cfg;
    char err[1024] = "";
    if (ch_config_init(&cfg) < 0) {
        abort();
    }
    int r = ch_config_load(&cfg, path, err, sizeof(err));
    if (r < 0) {
        FUZZ_CHECK(err[0] != '\0');
    } else {
        err[0] = '\0';
        if (ch_config_validate(&cfg, err, sizeof(err)) < 0) {
            FUZZ_CHECK(err[0] != '\0');
        }
        ch_features_t *fs = NULL;
        err[0] = '\0';
        if (ch_config_features(&cfg, &fs, err, sizeof(err)) == 0) {
            FUZZ_CHECK(ch_features_state_len(fs) > 0 || ch_features_count(fs) == 0);
            ch_features_free(fs);
        } else {
            FUZZ_CHECK(err[0] != '\0');
        }
        /* the input's first line again as a --set override */
        char line[256];
        size_t n = 0;
        while (n < size && n < sizeof(line) - 1 && data[n] != '\n' && data[n] != '\0') {
            line[n] = (char)data[n];
            n++;
        }
        line[n] = '\0';
        err[0] = '\0';
        if (ch_config_set(&cfg, line, err, sizeof(err)) < 0) {
            FUZZ_CHECK(err[0] != '\0');
        }
        FILE *null = fopen("/dev/null", "we");
        if (null) {
            ch_config_print(&cfg, null);
            fclose(null);
        }
    }
    ch_config_done(&cfg);
    return 0;
}

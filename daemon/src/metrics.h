/*
 * metrics.h - the Prometheus text exposition of the pipeline's counters.
 */
#ifndef CH_METRICS_H
#define CH_METRICS_H

#include <stdint.h>

#include "ch/codec.h"
#include "pipeline.h"

/* What main knows that the pipeline does not. */
typedef struct ch_metrics_ctx {
    double start_time_s; /* Unix time the process started */
    uint64_t http_requests;
    uint64_t http_evicted;
} ch_metrics_ctx_t;

/**
 * @brief Render every metric in the Prometheus text format (version 0.0.4) into out,
 *        replacing its contents. Call on the loop thread.
 * @returns 0, -ENOMEM.
 */
int ch_metrics_render(ch_pipeline_t *p, const ch_config_t *cfg, const ch_metrics_ctx_t *ctx,
                      ch_buf_t *out);

#endif

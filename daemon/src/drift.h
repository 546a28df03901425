/*
 * drift.h - feature drift of the risk model's inputs: per feature, the population
 * stability index (PSI) of the last drift.window scored vectors against the training
 * distribution the exporter stored in the model (metadata "cohortd.drift").
 *
 * @locality The loop's thread only.
 */
#ifndef CH_DRIFT_H
#define CH_DRIFT_H

#include <stdbool.h>
#include <stddef.h>

#define CH_DRIFT_FLOOR 1e-4 /* bin shares below this count as this in the PSI */

typedef struct ch_drift ch_drift_t;

/**
 * @brief Parse the model's training bins and make an empty window.
 * @param meta the metadata's JSON (tools/export_onnx.py drift_bins()).
 * @param d the model's input width (the metadata must have d features).
 * @param window vectors the PSI covers.
 * @returns 0, -EINVAL (errbuf says what is wrong with the metadata), -ENOMEM.
 */
int ch_drift_new(const char *meta, size_t d, size_t window, ch_drift_t **ret, char *errbuf,
                 size_t errlen);

ch_drift_t *ch_drift_free(ch_drift_t *dr);

/** @brief Add n scored vectors (rows of d floats); the oldest leave past the window. */
void ch_drift_add(ch_drift_t *dr, const float *x, size_t n);

/** @brief Vectors in the window now. */
size_t ch_drift_vectors(const ch_drift_t *dr);

/** @brief Feature j's PSI over the window (NaN while the window is empty). */
double ch_drift_psi(const ch_drift_t *dr, size_t j);

#endif

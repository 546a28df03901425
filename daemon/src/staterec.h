/*
 * staterec.h - one user's whole state as a changelog record value: versioned,
 * little-endian, fixed layout, tagged with the input offset it reflects.
 *
 * Layout (version 1), 64 + 8 x state_len bytes:
 *   0 u8 version (1)       1 u8 0              2 u16 state_len (doubles)
 *   4 u32 0                8 u64 layout fingerprint (features and their decay)
 *  16 i64 input offset: the state after the event at this offset of the record's
 *         partition (a restore applies a record only below the committed offset)
 *  24 i64 t_ref_ms         32 i16 segment      34 u16 0      36 u32 seg_gen
 *  40 i64 last_emit_ms     48 i64 last_risk_ms
 *  56 f32 last_score       60 u32 0            64 f64 state[state_len]
 * The Kafka key is the user id; the partition is the user's input partition.
 */
#ifndef CH_STATEREC_H
#define CH_STATEREC_H

#include <stddef.h>
#include <stdint.h>

#include "ch/features.h"
#include "ch/users.h"
#include "userrec.h"

#define CH_STATEREC_VERSION 1
#define CH_STATEREC_HEADER 64

/* A decoded record; state points into the buffer it was decoded from. */
typedef struct ch_staterec {
    int64_t input_offset;
    int64_t t_ref_ms;
    int16_t segment;
    uint32_t seg_gen;
    int64_t last_emit_ms, last_risk_ms;
    float last_score;
    const unsigned char *state; /* state_len little-endian doubles */
    size_t state_len;
} ch_staterec_t;

/** @brief Bytes of a record with state_len doubles. */
static inline size_t ch_staterec_size(size_t state_len) {
    return CH_STATEREC_HEADER + 8 * state_len;
}

/**
 * @brief The fingerprint of a feature layout: the first 8 bytes of SHA-256 over every
 *        feature's name and spec, the default half-life and the state length. A record
 *        from another layout must not be folded into this one.
 * @returns 0, -EIO (the digest failed).
 */
int ch_staterec_layout(const ch_features_t *fs, double default_half_life_ms, uint64_t *ret);

/** @brief Encode u (state_len doubles) and its daemon fields into buf. */
void ch_staterec_encode(uint64_t layout, int64_t input_offset, const ch_user_t *u, size_t state_len,
                        const ch_userrec_t *r, unsigned char *buf);

/**
 * @brief Decode and check a record.
 * @returns 0, -EINVAL (size or version wrong: damaged or not ours), -ESTALE (another
 *          feature layout).
 */
int ch_staterec_decode(const void *buf, size_t len, uint64_t layout, size_t state_len,
                       ch_staterec_t *ret);

/** @brief Write a decoded record into a user's record (partition: its input partition). */
void ch_staterec_apply(const ch_staterec_t *s, ch_user_t *u, ch_userrec_t *r, int32_t partition);

#endif

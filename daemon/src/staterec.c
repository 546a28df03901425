/*
 * staterec.c - the changelog record of one user's state (layout in staterec.h).
 *
 * Design notes
 * - Fixed offsets and explicit little-endian conversion, so a record written on one
 *   host restores on any other; the version byte leads so a later layout can be
 *   told apart.
 * - The layout fingerprint is a truncated SHA-256 (OpenSSL's libcrypto) of the
 *   feature declarations: a changelog written by a differently configured daemon
 *   is refused rather than folded into the wrong aggregates.
 */
#include "staterec.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

#include "le.h"

static uint64_t f64_bits(double d) {
    uint64_t v;
    memcpy(&v, &d, 8);
    return v;
}

static double bits_f64(uint64_t v) {
    double d;
    memcpy(&d, &v, 8);
    return d;
}

int ch_staterec_layout(const ch_features_t *fs, double default_half_life_ms, uint64_t *ret) {
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    char head[96];
    int n = snprintf(head, sizeof(head), "cohortd-state v%d hl=%.17g len=%zu\n",
                     CH_STATEREC_VERSION, default_half_life_ms, ch_features_state_len(fs));
    ok = ok && EVP_DigestUpdate(ctx, head, (size_t)n);
    for (size_t i = 0; ok && i < ch_features_count(fs); i++) {
        const char *name = ch_features_name(fs, i), *spec = ch_features_spec(fs, i);
        ok = EVP_DigestUpdate(ctx, name, strlen(name) + 1) &&
             EVP_DigestUpdate(ctx, spec, strlen(spec) + 1);
    }
    for (size_t i = 0; ok && i < ch_features_tag_count(fs); i++) {
        const char *name = ch_features_tag_name(fs, i), *spec = ch_features_tag_spec(fs, i);
        ok = EVP_DigestUpdate(ctx, "tags.", 5) && EVP_DigestUpdate(ctx, name, strlen(name) + 1) &&
             EVP_DigestUpdate(ctx, spec, strlen(spec) + 1);
    }
    ok = ok && EVP_DigestFinal_ex(ctx, md, &md_len) && md_len >= 8;
    EVP_MD_CTX_free(ctx);
    if (!ok) {
        return -EIO;
    }
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) {
        v = v << 8 | md[i];
    }
    *ret = v;
    return 0;
}

void ch_staterec_encode(uint64_t layout, int64_t input_offset, const ch_user_t *u, size_t state_len,
                        const ch_userrec_t *r, unsigned char *buf) {
    memset(buf, 0, CH_STATEREC_HEADER);
    buf[0] = CH_STATEREC_VERSION;
    ch_put16(buf + 2, (uint16_t)state_len);
    ch_put64(buf + 8, layout);
    ch_put64(buf + 16, (uint64_t)input_offset);
    ch_put64(buf + 24, (uint64_t)u->t_ref_ms);
    ch_put16(buf + 32, (uint16_t)u->segment);
    ch_put32(buf + 36, u->seg_gen);
    ch_put64(buf + 40, (uint64_t)r->last_emit_ms);
    ch_put64(buf + 48, (uint64_t)r->last_risk_ms);
    uint32_t score;
    memcpy(&score, &r->last_score, 4);
    ch_put32(buf + 56, score);
    for (size_t i = 0; i < state_len; i++) {
        ch_put64(buf + CH_STATEREC_HEADER + 8 * i, f64_bits(u->state[i]));
    }
}

int ch_staterec_decode(const void *buf, size_t len, uint64_t layout, size_t state_len,
                       ch_staterec_t *ret) {
    const unsigned char *b = buf;
    if (!b || len < CH_STATEREC_HEADER || b[0] != CH_STATEREC_VERSION ||
        len != ch_staterec_size(ch_get16(b + 2))) {
        return -EINVAL;
    }
    if (ch_get16(b + 2) != state_len || ch_get64(b + 8) != layout) {
        return -ESTALE;
    }
    uint32_t score = ch_get32(b + 56);
    *ret = (ch_staterec_t){.input_offset = (int64_t)ch_get64(b + 16),
                           .t_ref_ms = (int64_t)ch_get64(b + 24),
                           .segment = (int16_t)ch_get16(b + 32),
                           .seg_gen = ch_get32(b + 36),
                           .last_emit_ms = (int64_t)ch_get64(b + 40),
                           .last_risk_ms = (int64_t)ch_get64(b + 48),
                           .state = b + CH_STATEREC_HEADER,
                           .state_len = state_len};
    memcpy(&ret->last_score, &score, 4);
    return 0;
}

void ch_staterec_apply(const ch_staterec_t *s, ch_user_t *u, ch_userrec_t *r, int32_t partition) {
    u->t_ref_ms = s->t_ref_ms;
    u->segment = s->segment;
    u->seg_gen = s->seg_gen;
    for (size_t i = 0; i < s->state_len; i++) {
        u->state[i] = bits_f64(ch_get64(s->state + 8 * i));
    }
    r->last_emit_ms = s->last_emit_ms;
    r->last_risk_ms = s->last_risk_ms;
    r->last_score = s->last_score;
    r->offset = s->input_offset;
    r->partition = partition;
}

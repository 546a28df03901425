/*
 * le.h - fixed-width little-endian fields in byte buffers, for the formats cohortd
 * writes to Kafka and disk (staterec.h, snapfile.h): the same bytes on every host.
 */
#ifndef CH_LE_H
#define CH_LE_H

#include <endian.h>
#include <stdint.h>
#include <string.h>

static inline void ch_put16(unsigned char *p, uint16_t v) {
    v = htole16(v);
    memcpy(p, &v, 2);
}

static inline void ch_put32(unsigned char *p, uint32_t v) {
    v = htole32(v);
    memcpy(p, &v, 4);
}

static inline void ch_put64(unsigned char *p, uint64_t v) {
    v = htole64(v);
    memcpy(p, &v, 8);
}

static inline uint16_t ch_get16(const unsigned char *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return le16toh(v);
}

static inline uint32_t ch_get32(const unsigned char *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return le32toh(v);
}

static inline uint64_t ch_get64(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return le64toh(v);
}

#endif

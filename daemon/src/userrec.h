/*
 * userrec.h - the daemon's own fields of a user, kept in the user table's extra area
 * (model/ never sees them): what the emit policies compare against, and the input
 * partition the user lives on (for eviction when it is revoked).
 */
#ifndef CH_USERREC_H
#define CH_USERREC_H

#include <math.h>
#include <stdint.h>

#include "ch/users.h"

typedef struct ch_userrec {
    int64_t last_emit_ms; /* stream time of the last profile update; INT64_MIN none */
    int64_t last_risk_ms; /* stream time of the last risk update; INT64_MIN none */
    int64_t offset;       /* input offset of the latest event folded in; -1 none */
    int32_t partition;    /* input partition the user was last seen on; -1 none */
    float last_score;     /* last published risk score; NaN none */
} ch_userrec_t;

/** @brief The daemon's fields of a record of a table made with sizeof(ch_userrec_t). */
static inline ch_userrec_t *ch_userrec(const ch_users_t *users, const ch_user_t *u) {
    return (ch_userrec_t *)ch_users_extra(users, u);
}

/** @brief A new user: nothing published yet, no partition. */
static inline void ch_userrec_init(ch_userrec_t *r) {
    *r = (ch_userrec_t){INT64_MIN, INT64_MIN, -1, -1, NAN};
}

#endif

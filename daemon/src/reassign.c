/*
 * reassign.c - the population pass of the segments, on the pipeline's side: its slices
 * run as background work between batches, and once new centroids are live every user
 * in the table is reassigned and each move published (README "Segments").
 *
 * Design notes
 * - segments.c gathers the users' vectors and fits them; this file walks the table
 *   again, batch.max_events users a slice, reads each vector at the pass's stream time
 *   (as the fit did), and gives each user the nearest centroid, without hysteresis:
 *   after a pass a user's segment is the nearest centroid of their vector, which is
 *   what the refresh's quality is measured on.
 * - A user whose segment or generation changed gets a profile update like one caused
 *   by an event, except that event_id is null, ts is the pass's stream time (or the
 *   user's own, if later), and it carries the header cohortd-cause: segment-refresh.
 *   Each slice is a batch of the delivery tracker with no input offsets: its outputs
 *   are tracked, count towards the batch that holds them, and under exactly_once go
 *   into the open transaction like any other output. With the state changelog the
 *   moved users are marked changed at the input offset they already reflect, so a
 *   restore brings back the new segment.
 * - With segments.topic, every segment's update (segment_update.avsc: centroid, the
 *   members' mean raw vector measured by the walk, trending items and categories) is
 *   published once the walk is over, and a segment's alone whenever its generation
 *   changes between passes (a dead one re-seeded online); keyed by segment id, so a
 *   compacted topic keeps the latest of each.
 * - A slice needs a free tracker slot; without one it waits for the next call (the
 *   producer's acknowledgements start the background work again). A user
 *   inserted while the walk runs may be missed if the table grows under the cursor;
 *   its own events assign it.
 */
#include "pipeline_int.h"
#include "segsync.h"

#include <stdio.h>
#include <string.h>

#define SLICE_S 0.01 /* wall time of the fit a background call may take */

/* One slice of the walk: up to batch.max_events users. Returns false once it is over. */
static bool walk(ch_pipeline_t *p) {
    ch_reassign_t *ra = &p->ra;
    ch_tracked_t *b = ch_tracker_open(p->tracker);
    size_t slot = ch_tracker_slot(p->tracker, b);
    p->n_ts[slot] = 0;
    p->observed[slot] = false;
    size_t m = 0, max = (size_t)p->cfg->batch_max_events;
    ch_user_t *u = NULL;
    while (m < max && (u = ch_users_next(p->users, &ra->cursor))) {
        int64_t t = ch_user_vector(p, u, ra->at_ms, p->X + m * p->n_feats);
        p->rows[m] =
            (ch_row_t){.u = u, .uid = ch_users_key(p->users, u), .uid_len = u->key_len, .ts_ms = t};
        p->prev_seg[m] = u->segment;
        p->prev_gen[m] = u->seg_gen;
        m++;
    }
    if (m) {
        ch_segments_assign(p->segs, p->X, m, p->assign);
    }
    for (size_t i = 0; i < m; i++) { /* the members' mean vectors, for segment updates */
        int32_t seg = p->assign[i].segment;
        if (seg >= 0) {
            ra->counts[seg]++;
            for (size_t f = 0; f < p->n_feats; f++) {
                ra->sums[(size_t)seg * p->n_feats + f] += p->X[i * p->n_feats + f];
            }
        }
    }
    p->refreshing = true;
    for (size_t i = 0; i < m && !p->failed; i++) {
        const ch_kmeans_assign_t *a = &p->assign[i];
        if (a->segment < 0 || (a->segment == p->prev_seg[i] && a->generation == p->prev_gen[i])) {
            continue;
        }
        ch_user_t *v = p->rows[i].u;
        ch_outputs_profile(p, b, i, v);
        ch_segments_moved(p->segs, v->segment, a->segment);
        v->segment = (int16_t)a->segment;
        v->seg_gen = a->generation;
        const ch_userrec_t *ur = ch_userrec(p->users, v);
        if (ur->partition >= 0) { /* also a seeded user, who reflects no offset (-1) */
            ch_changelog_touch(p, v, ur->offset);
        }
        ra->moved++;
    }
    p->refreshing = false;
    ra->users += m;
    ch_changelog_batch_done(p, b);
    ch_producer_poll(p->clients.producer);
    ch_outputs_release(p);
    return u != NULL;
}

/* segments.topic: the updates of every segment (after a pass) or of those whose
 * generation changed since they were last published, in one batch. */
static void publish_segments(ch_pipeline_t *p) {
    ch_reassign_t *ra = &p->ra;
    size_t k = p->cfg->segments.k;
    bool due = ra->publish_all;
    for (size_t j = 0; !due && j < k; j++) {
        due = ch_segments_unpublished(p->segs, j);
    }
    if (!due || !ch_tracker_has_room(p->tracker)) {
        return; /* no room: the next call tries again */
    }
    ch_tracked_t *b = ch_tracker_open(p->tracker);
    size_t slot = ch_tracker_slot(p->tracker, b);
    p->n_ts[slot] = 0;
    p->observed[slot] = false;
    for (size_t j = 0; j < k && !p->failed; j++) {
        if (!ra->publish_all && !ch_segments_unpublished(p->segs, j)) {
            continue;
        }
        ch_segment_rec_t rec;
        ch_segments_record(p->segs, j, p->st.stream_time_ms, p->feat_names, &rec);
        int r =
            p->cfg->output_format == CH_FORMAT_JSON
                ? ch_json_encode_segment(&p->out, &rec)
                : ch_encode_segment(&p->out, p->cfg->output_framing, p->segment_schema_id, &rec);
        char key[16];
        int key_len = snprintf(key, sizeof(key), "%zu", j);
        if (r < 0) {
            ch_log(CH_LOG_ERR, "out of memory encoding a segment update; stopping");
            ch_tracker_fail(b);
            p->failed = true;
        } else if (ch_outputs_send(p, b, OUT_SEGMENT, p->cfg->segments_topic, -1, key,
                                   (size_t)key_len, p->out.data, p->out.len, NULL, 0) == 0) {
            p->st.segment_updates_sent++;
        }
    }
    ra->publish_all = false;
    ch_changelog_batch_done(p, b);
    ch_producer_poll(p->clients.producer);
    ch_outputs_release(p);
}

void ch_reassign_begin(ch_pipeline_t *p) {
    ch_reassign_t *ra = &p->ra;
    ra->on = true;
    ra->cursor = 0;
    ra->at_ms = p->st.stream_time_ms;
    ra->users = ra->moved = 0;
    memset(ra->sums, 0, p->cfg->segments.k * p->n_feats * sizeof(double));
    memset(ra->counts, 0, p->cfg->segments.k * sizeof(uint64_t));
}

bool ch_reassign_step(ch_pipeline_t *p) {
    ch_reassign_t *ra = &p->ra;
    if (!p->segs || p->stopping || ch_pipeline_failed(p)) {
        return false;
    }
    /* shared segments: the coordinator publishes the segments' updates */
    if (!ra->on && p->cfg->segments_topic[0] && (!p->sync || ch_segsync_coordinating(p->sync))) {
        publish_segments(p);
    }
    if (!ra->on && p->sync) {
        if (!ch_segsync_apply(p)) {
            return false; /* segsync.c runs the passes */
        }
        ch_reassign_begin(p);
    } else if (!ra->on) {
        ch_seg_step_t r =
            ch_segments_step(p->segs, p->users, p->fs, p->st.stream_time_ms, ch_now_s(), SLICE_S);
        if (r != CH_SEG_FITTED) {
            return r == CH_SEG_BUSY;
        }
        ch_reassign_begin(p);
    }
    if (!ch_tracker_has_room(p->tracker)) {
        return false; /* acknowledgements free a slot and call again (main.c) */
    }
    if (walk(p)) {
        return true;
    }
    ra->on = false;
    ch_segments_set_means(p->segs, ra->sums, ra->counts);
    ch_segments_reassigned(p->segs, ra->users, ra->moved, ch_now_s());
    ra->publish_all = p->cfg->segments_topic[0] != '\0';
    return ra->publish_all; /* published at the next call */
}

/*
 * pipeline.c - the batch path: drain -> decode -> fold into user state -> one row per
 * event -> score and segment the batch at once -> publish (README "Architecture").
 *
 * Design notes
 * - One drain = one batch: up to batch.max_events messages are decoded,
 *   validated, folded into user state and their outputs enqueued, all on the
 *   loop thread, with no allocation per event (decoder views borrow from the
 *   Kafka messages; scratch arrays are sized at start-up).
 * - Each batch is a slot of the delivery tracker (stream/'s ch/tracker.h): its
 *   input offsets are stored for commit only once every output of it and of all
 *   older batches is acknowledged (outputs.c), so a committed offset never passes
 *   an unacknowledged output. A failed output stops the daemon; a restart
 *   reprocesses from the last commit.
 * - Bad input is never dropped: it goes to the dead-letter topic with its reason,
 *   and its offset is committed only once the dead letter is acknowledged.
 * - A row is the user's vector right after its event, read at the user's stream
 *   time, so an output is a function of the events seen, whatever their order.
 */
#include "pipeline_int.h"

#include "foldrow.h"

#include <errno.h>
#include <math.h>
#include <string.h>

bool ch_pipeline_failed(const ch_pipeline_t *p) { return p->failed || p->clients.fatal; }

static void fail_batch(ch_pipeline_t *p, ch_tracked_t *b) {
    ch_tracker_fail(b);
    p->failed = true;
}

/* Decode, validate and fold one message into its user's state; queue its row. */
static void process(ch_pipeline_t *p, ch_tracked_t *b, const ch_msg_t *m, double now_ms) {
    char why[512];
    ch_event_view_t ev;
    ch_obs_t obs;
    ch_bad_reason_t bad = ch_events_read(p->events, m, now_ms, &ev, &obs, why, sizeof(why));
    if (bad != CH_BAD_NONE) {
        bool decoded = bad != CH_BAD_DECODE && bad != CH_BAD_SCHEMA && bad != CH_BAD_TOO_MANY_ATTRS;
        ch_outputs_dead_letter(p, b, m, decoded ? &ev : NULL, bad, why);
        return;
    }
    if (p->pseud) { /* from here on the user is known by their pseudonym only */
        char *id = p->pseud_ids + p->n_rows * CH_PSEUDONYM_LEN;
        if (ch_pseudonym_of(p->pseud, ev.user_id, ev.user_id_len, id) < 0) {
            ch_log(CH_LOG_ERR, "privacy: computing a pseudonym failed; stopping");
            fail_batch(p, b);
            return;
        }
        ev.user_id = id;
        ev.user_id_len = CH_PSEUDONYM_LEN;
    }
    ch_user_t *u = NULL;
    int r = ch_users_upsert(p->users, ev.user_id, ev.user_id_len, &u);
    if (r < 0) {
        ch_log(CH_LOG_ERR, "user table: %s; stopping", strerror(-r));
        fail_batch(p, b);
        return;
    }
    ch_userrec_t *ur = ch_userrec(p->users, u);
    if (r == 1) {
        ch_features_state_init(p->fs, u->state);
        ch_userrec_init(ur);
    }
    ur->partition = m->partition;
    size_t i = p->n_rows++; /* the vector after this event; scored with the batch */
    ch_fold_row(p->fs, u, &obs, p->feats, p->X + i * p->n_feats, p->n_feats);
    ch_changelog_touch(p, u, m->offset);
    if (ev.ts_ms > p->st.stream_time_ms) {
        p->st.stream_time_ms = ev.ts_ms;
    }
    p->st.events_ok++;
    p->rows[i] = (ch_row_t){.u = u,
                            .uid = ev.user_id,
                            .eid = ev.event_id,
                            .uid_len = ev.user_id_len,
                            .eid_len = ev.event_id_len,
                            .item = ev.item,
                            .cat = ev.category,
                            .item_len = ev.item_len,
                            .cat_len = ev.category_len,
                            .ev_ms = ev.ts_ms,
                            .ts_ms = u->t_ref_ms};
    p->prev_seg[i] = u->segment;
    p->prev_gen[i] = u->seg_gen;
    size_t slot = ch_tracker_slot(p->tracker, b), t = p->n_ts[slot]++;
    p->ev_ts[slot * (size_t)p->cfg->batch_max_events + t] = ev.ts_ms;
    p->kafka_ts[slot * (size_t)p->cfg->batch_max_events + t] = m->timestamp_ms;
}

/* The row's user record, or NULL if it was evicted later in the same batch. */
static ch_user_t *row_user(ch_pipeline_t *p, const ch_row_t *r) {
    if (r->u->key_len == r->uid_len &&
        memcmp(ch_users_key(p->users, r->u), r->uid, r->uid_len) == 0) {
        return r->u;
    }
    return ch_users_find(p->users, r->uid, r->uid_len);
}

/* Score and segment the batch's rows at once, then publish in event order. */
static void finish(ch_pipeline_t *p, ch_tracked_t *b) {
    size_t n = p->n_rows;
    p->n_rows = 0;
    if (n == 0 || p->failed) {
        return;
    }
    if (p->scorer.model) {
        ch_onnx_eval(p->scorer.model, p->X, n, p->scores);
        ch_scorer_observe(&p->scorer, p->X, n);
        p->st.scored += n;
        if (p->challenger.model) { /* the same rows: compared, never acted on */
            ch_onnx_eval(p->challenger.model, p->X, n, p->scores2);
        }
    }
    if (p->segs && !p->ra.on &&
        ch_segments_seed_inline(p->segs, p->users, p->fs, n, p->st.stream_time_ms)) {
        ch_reassign_begin(p); /* the other users get theirs in the background */
    }
    if (p->segs) {
        ch_segments_update(p->segs, p->X, n, p->st.stream_time_ms, p->prev_seg, p->prev_gen,
                           p->assign);
    }
    for (size_t i = 0; i < n && !p->failed; i++) {
        ch_user_t *u = row_user(p, &p->rows[i]);
        ch_outputs_profile(p, b, i, u);
        if (p->scorer.model) {
            ch_outputs_risk(p, b, i, u);
        }
        if (p->segs) {
            const ch_row_t *r = &p->rows[i];
            ch_segments_observe(p->segs, p->assign[i].segment, r->item, r->item_len, r->cat,
                                r->cat_len, r->ev_ms);
        }
        if (u && p->segs && p->assign[i].segment >= 0) {
            ch_segments_moved(p->segs, u->segment, p->assign[i].segment);
            u->segment = (int16_t)p->assign[i].segment;
            u->seg_gen = p->assign[i].generation;
        }
    }
}

int ch_pipeline_drain(ch_pipeline_t *p) {
    if (p->stopping || ch_pipeline_failed(p)) {
        return 0;
    }
    ch_changelog_flush(p, false); /* due, or the tracker is full */
    ch_schemafetch_tick(p);
    if (!ch_tracker_has_room(p->tracker)) {
        return -EAGAIN;
    }
    int n = ch_consumer_drain(p->clients.consumer, p->msgs, (size_t)p->cfg->batch_max_events);
    if (n <= 0) {
        return 0;
    }
    ch_tracked_t *b = ch_tracker_open(p->tracker);
    size_t slot = ch_tracker_slot(p->tracker, b);
    p->n_ts[slot] = 0;
    p->observed[slot] = false;
    p->st.batches++;
    ch_histogram_observe(&p->st.batch_events, n);
    double t0 = ch_now_s();
    /* One wall-clock reading per batch bounds ts_in_future (input.max_future is coarse). */
    double now_ms = ch_wall_ms();
    for (int i = 0; i < n && !ch_pipeline_failed(p); i++) {
        const ch_msg_t *m = &p->msgs[i];
        if (m->eof) {
            continue; /* kafka.enable.partition.eof set: an end, not a record */
        }
        if (m->err) {
            ch_clients_error(&p->clients, m->err_fatal, "kafka consumer",
                             m->errstr ? m->errstr : "error");
            continue;
        }
        if (!ch_rebalance_owns(p, m->partition)) {
            continue; /* fetched before a revoke: the new owner processes it */
        }
        if (ch_schemafetch_waits(p, m)) {
            continue; /* back to the consumer: its partition waits for a writer schema */
        }
        p->st.consumed++;
        if (ch_tracker_consumed(b, m->partition, m->offset) < 0) {
            ch_log(CH_LOG_ERR, "out of memory tracking offsets; stopping");
            fail_batch(p, b);
            break;
        }
        ch_txn_consumed(p, m->partition, m->offset);
        ch_changelog_consumed(p, m->partition, m->offset);
        if (ch_consumer_before_start(p->clients.consumer, m)) {
            p->st.input_before_start++; /* input.start_at: consumed, not processed */
            continue;
        }
        process(p, b, m, now_ms);
    }
    finish(p, b);
    ch_events_release(p->events);  /* the rows' ids are no longer needed */
    ch_changelog_batch_done(p, b); /* sealed now, or with the next changelog flush */
    ch_histogram_observe(&p->st.batch_seconds, ch_now_s() - t0);
    ch_producer_poll(p->clients.producer);
    ch_outputs_release(p);
    return n;
}

void ch_pipeline_poll_producer(ch_pipeline_t *p) {
    ch_producer_poll(p->clients.producer);
    ch_outputs_release(p);
}

void ch_pipeline_tick(ch_pipeline_t *p) {
    if (p->idle_evict_ms > 0 && p->st.stream_time_ms > 0) {
        int64_t before = p->st.stream_time_ms - (int64_t)p->idle_evict_ms;
        p->st.users_evicted_idle += ch_users_evict_idle(p->users, before, 100000);
    }
    /* input the broker deleted before it was consumed: never silent */
    ch_consumer_skip_t skips[16];
    size_t n = ch_consumer_take_skips(p->clients.consumer, skips, 16, &p->st.input_jumps,
                                      &p->st.input_skipped);
    for (size_t i = 0; i < n; i++) {
        ch_log(CH_LOG_ERR,
               "%s[%d]: %lld record(s), offsets %lld to %lld, were deleted by the broker before "
               "they were consumed (retention or a size limit moved the log start past them); "
               "consumption went on at offset %lld: those events are lost to the features",
               p->cfg->input_topic, skips[i].partition, (long long)(skips[i].to - skips[i].from),
               (long long)skips[i].from, (long long)skips[i].to - 1, (long long)skips[i].at);
    }
}


/*
 * cohort-produce - stream one's own CSV or JSON Lines file into the events topic as
 * cohortd's user events, through a mapping file that names, for each role, the column
 * (CSV) or field path (JSON Lines, tool_jsonl.h) it comes from.
 *
 * Design notes
 * - Every row is read, checked and converted before anything is sent: a bad row or a
 *   bad mapping is reported as FILE:LINE:COLUMN (or MAPPING:LINE) and nothing of the
 *   file reaches Kafka. Rows are then sent in event-time order (stable: rows of equal
 *   time keep their file order), as a live topic would have received them.
 * - The mapping is `role = column`, `role = "literal"`, or for amount `column * column`
 *   (quantity times unit price); times are seconds, milliseconds or microseconds since
 *   1970, ISO-8601, or a strptime(3) format, all read as UTC.
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tool_common.h"
#include "tool_csv.h"
#include "tool_jsonl.h"

#define MAX_COLS 256
#define MAX_ATTRS 32

typedef enum src_kind { SRC_NONE, SRC_COLUMN, SRC_LITERAL, SRC_PRODUCT } src_kind_t;

typedef struct src {
    src_kind_t kind;
    int col, col2;  /* SRC_COLUMN, SRC_PRODUCT */
    char *literal;  /* SRC_LITERAL */
    char name[128]; /* as written in the mapping, for messages */
    int map_line;
} src_t;

typedef enum ts_unit { TS_S, TS_MS, TS_US, TS_ISO, TS_STRPTIME } ts_unit_t;

typedef struct mapping {
    src_t user_id, event_id, ts, type, amount, item, category;
    src_t attrs[MAX_ATTRS];
    char attr_names[MAX_ATTRS][64];
    int n_attrs;
    ts_unit_t unit;
    char ts_format[128];
} mapping_t;

typedef struct row {
    int64_t ts_ms;
    long line;
    char *uid, *eid, *type, *item, *category;
    bool has_amount;
    double amount;
    ch_attr_t attrs[MAX_ATTRS];
    size_t n_attrs;
} row_t;

static bool jsonl_input; /* JSON Lines: columns are field paths, locations have no column */

/* "PATH:LINE:COLUMN (name)" for CSV, "PATH:LINE (field name)" for JSON Lines. */
static const char *where(char *buf, size_t len, const char *path, long line, int col,
                         const char *name) {
    if (jsonl_input) {
        snprintf(buf, len, "%s:%ld (field %s)", path, line, name);
    } else {
        snprintf(buf, len, "%s:%ld:%d (%s)", path, line, col + 1, name);
    }
    return buf;
}

static void usage(FILE *f) {
    fprintf(f, "Usage: cohort-produce --brokers HOST:PORT --mapping MAP.conf [OPTIONS] FILE\n"
               "Stream a CSV file (with a header line) or a JSON Lines file (one object per\n"
               "line) into Kafka as cohortd user events, in event-time order, through a\n"
               "mapping of roles to columns (JSON: field names or dotted paths).\n\n"
               "  -b, --brokers LIST    Kafka bootstrap servers (required)\n"
               "  -m, --mapping FILE    the mapping (below; required)\n"
               "  -t, --topic NAME      topic (default events)\n"
               "  -r, --rate N          at most N events/s (default 0: no cap)\n"
               "      --framing F       confluent (default) or plain\n"
               "      --schema-id N     Confluent schema id (default 1 = user_event.avsc)\n"
               "      --format F        csv or jsonl (default: jsonl for .jsonl/.ndjson files)\n"
               "      --check           read and check everything, send nothing\n"
               "  -q, --quiet           no progress lines\n"
               "  -h, --help            this help\n\n"
               "Mapping: one `role = source` per line, # comments. Roles: user_id, ts (required),\n"
               "event_id (default FILE-LINE), type (default \"event\"), amount, item, category,\n"
               "attrs.<name> (numbers). Sources: a column name (JSON Lines: a field name or\n"
               "dotted path, customer.id), a \"literal\", or for amount\n"
               "`column * column`. ts.format: s, ms, us (since 1970), iso8601, or a strptime\n"
               "format such as %%m/%%d/%%Y %%H:%%M (UTC). Example (retail invoice lines):\n"
               "  user_id = CustomerID\n  event_id = InvoiceNo\n  ts = InvoiceDate\n"
               "  ts.format = %%m/%%d/%%Y %%H:%%M\n  type = \"purchase\"\n"
               "  amount = Quantity * UnitPrice\n  item = StockCode\n  category = Country\n"
               "  attrs.quantity = Quantity\n\n"
               "Exit status: 0 all delivered, 1 a bad row, mapping or delivery (nothing is sent\n"
               "when the file or mapping is bad), 2 usage error.\n");
}

static char *trim(char *s) {
    while (isspace((unsigned char)*s)) {
        s++;
    }
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1])) {
        *--e = '\0';
    }
    return s;
}

static int find_col(char **header, int n, const char *name) {
    for (int i = 0; i < n; i++) {
        if (strcmp(header[i], name) == 0) {
            return i;
        }
    }
    return -1;
}

static void list_cols(char **header, int n, char *buf, size_t len) {
    size_t o = 0;
    buf[0] = '\0';
    for (int i = 0; i < n && o < len; i++) {
        o += (size_t)snprintf(buf + o, len - o, "%s%s", i ? ", " : "", header[i]);
    }
}

/* Resolve one source against the header. @returns 0 or -1 (message printed). */
static int resolve(src_t *s, const char *text, const char *map_path, int line, char **header, int n,
                   const char *csv_path, bool product_ok) {
    snprintf(s->name, sizeof(s->name), "%s", text);
    s->map_line = line;
    size_t len = strlen(text);
    if (len >= 2 && text[0] == '"' && text[len - 1] == '"') {
        s->kind = SRC_LITERAL;
        s->literal = strndup(text + 1, len - 2);
        return s->literal ? 0 : -1;
    }
    char cols[MAX_COLS * 8];
    const char *star = strchr(text, '*');
    if (star && product_ok) {
        char a[128], b[128];
        snprintf(a, sizeof(a), "%.*s", (int)(star - text), text);
        snprintf(b, sizeof(b), "%s", star + 1);
        s->kind = SRC_PRODUCT;
        s->col = find_col(header, n, trim(a));
        s->col2 = find_col(header, n, trim(b));
        if (s->col >= 0 && s->col2 >= 0) {
            return 0;
        }
    } else {
        s->kind = SRC_COLUMN;
        s->col = find_col(header, n, text);
        if (s->col >= 0) {
            return 0;
        }
    }
    list_cols(header, n, cols, sizeof(cols));
    fprintf(stderr, "%s:%d: '%s' is not a %s of %s (%s: %s)\n", map_path, line, text,
            jsonl_input ? "field" : "column", csv_path, jsonl_input ? "fields" : "columns", cols);
    return -1;
}

static int read_mapping(const char *path, const char *csv_path, char **header, int n,
                        mapping_t *m) {
    FILE *f = fopen(path, "re");
    if (!f) {
        fprintf(stderr, "cohort-produce: %s: %s\n", path, strerror(errno));
        return -1;
    }
    memset(m, 0, sizeof(*m));
    m->unit = TS_S;
    char buf[1024];
    int line = 0, rc = 0;
    while (rc == 0 && fgets(buf, sizeof(buf), f)) {
        line++;
        char *hash = strchr(buf, '#');
        if (hash && !strchr(buf, '"')) {
            *hash = '\0';
        }
        char *s = trim(buf);
        if (!*s) {
            continue;
        }
        char *eq = strchr(s, '=');
        if (!eq) {
            fprintf(stderr, "%s:%d: expected 'role = source'\n", path, line);
            rc = -1;
            break;
        }
        *eq = '\0';
        char *key = trim(s), *val = trim(eq + 1);
        src_t *dst = NULL;
        bool product = false;
        if (strcmp(key, "ts.format") == 0) {
            static const char *const units[] = {"s", "ms", "us", "iso8601"};
            m->unit = TS_STRPTIME;
            for (int u = 0; u < 4; u++) {
                if (strcmp(val, units[u]) == 0) {
                    m->unit = (ts_unit_t)u;
                }
            }
            if (m->unit == TS_STRPTIME && !strchr(val, '%')) {
                fprintf(stderr,
                        "%s:%d: ts.format: expected s, ms, us, iso8601 or a strptime format "
                        "(with %%), got '%s'\n",
                        path, line, val);
                rc = -1;
            }
            snprintf(m->ts_format, sizeof(m->ts_format), "%s", val);
            continue;
        }
        if (strcmp(key, "user_id") == 0) {
            dst = &m->user_id;
        } else if (strcmp(key, "event_id") == 0) {
            dst = &m->event_id;
        } else if (strcmp(key, "ts") == 0) {
            dst = &m->ts;
        } else if (strcmp(key, "type") == 0) {
            dst = &m->type;
        } else if (strcmp(key, "amount") == 0) {
            dst = &m->amount;
            product = true;
        } else if (strcmp(key, "item") == 0) {
            dst = &m->item;
        } else if (strcmp(key, "category") == 0) {
            dst = &m->category;
        } else if (strncmp(key, "attrs.", 6) == 0 && key[6] && m->n_attrs < MAX_ATTRS) {
            snprintf(m->attr_names[m->n_attrs], sizeof(m->attr_names[0]), "%s", key + 6);
            dst = &m->attrs[m->n_attrs++];
            product = true;
        } else {
            fprintf(stderr,
                    "%s:%d: unknown role '%s' (roles: user_id, event_id, ts, ts.format, type, "
                    "amount, item, category, attrs.<name>)\n",
                    path, line, key);
            rc = -1;
            break;
        }
        if (dst->kind != SRC_NONE) {
            fprintf(stderr, "%s:%d: %s is mapped twice (first on line %d)\n", path, line, key,
                    dst->map_line);
            rc = -1;
            break;
        }
        rc = resolve(dst, val, path, line, header, n, csv_path, product);
    }
    fclose(f);
    if (rc == 0 && (m->user_id.kind == SRC_NONE || m->ts.kind == SRC_NONE)) {
        fprintf(stderr, "%s: user_id and ts must be mapped\n", path);
        rc = -1;
    }
    return rc;
}

/* ISO-8601: date, optional [T ]time[.fraction], optional Z / UTC / +hh:mm / -hh:mm. */
static int parse_iso(const char *s, int64_t *ret) {
    struct tm tm = {0};
    const char *p = strptime(s, "%Y-%m-%d", &tm);
    if (!p) {
        return -1;
    }
    double frac = 0;
    if (*p == 'T' || *p == ' ') {
        const char *q = strptime(p + 1, "%H:%M:%S", &tm);
        if (!q) {
            q = strptime(p + 1, "%H:%M", &tm);
        }
        if (!q) {
            return -1;
        }
        p = q;
        if (*p == '.') {
            char *end;
            frac = strtod(p, &end);
            p = end;
        }
    }
    int64_t off_s = 0;
    while (*p == ' ') {
        p++;
    }
    if (*p == 'Z' || strcmp(p, "UTC") == 0) {
        p += *p == 'Z' ? 1 : 3;
    } else if (*p == '+' || *p == '-') {
        int hh = 0, mm = 0, used = 0;
        if (sscanf(p + 1, "%2d:%2d%n", &hh, &mm, &used) != 2 &&
            sscanf(p + 1, "%2d%2d%n", &hh, &mm, &used) != 2) {
            return -1;
        }
        off_s = (*p == '-' ? -1 : 1) * (hh * 3600 + mm * 60);
        p += 1 + used;
    }
    if (*p) {
        return -1;
    }
    *ret = ((int64_t)timegm(&tm) - off_s) * 1000 + (int64_t)llround(frac * 1000);
    return 0;
}

static int parse_time(const mapping_t *m, const char *s, int64_t *ret) {
    char *end;
    errno = 0;
    if (m->unit == TS_ISO) {
        return parse_iso(s, ret);
    }
    if (m->unit == TS_STRPTIME) {
        struct tm tm = {0};
        const char *p = strptime(s, m->ts_format, &tm);
        if (!p || *trim((char *)p)) {
            return -1;
        }
        *ret = (int64_t)timegm(&tm) * 1000;
        return 0;
    }
    double v = strtod(s, &end);
    if (end == s || *end || errno || !isfinite(v)) {
        return -1;
    }
    *ret = m->unit == TS_S ? llround(v * 1000) : m->unit == TS_MS ? llround(v) : llround(v / 1000);
    return 0;
}

static int parse_num(const char *s, double *ret) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *trim(end) || errno == ERANGE || !isfinite(v)) {
        return -1;
    }
    *ret = v;
    return 0;
}

static char *text(const src_t *s, char **cols) {
    return s->kind == SRC_LITERAL ? s->literal : s->kind == SRC_COLUMN ? cols[s->col] : NULL;
}

/* A numeric source of a row: the column, or the product of two. @returns 1 present, 0
 * empty, -1 bad (message printed). */
static int number(const src_t *s, char **cols, char **header, const char *path, long line,
                  double *ret) {
    int c[2] = {s->col, s->kind == SRC_PRODUCT ? s->col2 : -1};
    double v[2] = {1, 1};
    if (s->kind == SRC_LITERAL) {
        return parse_num(s->literal, ret) == 0 ? 1 : -1;
    }
    for (int i = 0; i < 2 && c[i] >= 0; i++) {
        if (!*cols[c[i]]) {
            return 0;
        }
        if (parse_num(cols[c[i]], &v[i]) < 0) {
            char at[512];
            fprintf(stderr, "%s: '%s' is not a number\n",
                    where(at, sizeof(at), path, line, c[i], header[c[i]]), cols[c[i]]);
            return -1;
        }
    }
    *ret = v[0] * v[1];
    return 1;
}

static int by_time(const void *a, const void *b) {
    const row_t *x = a, *y = b;
    return x->ts_ms < y->ts_ms   ? -1
           : x->ts_ms > y->ts_ms ? 1
                                 : (x->line > y->line) - (x->line < y->line);
}

/* Where rows come from: the lines of a CSV file after its header, or the objects of a
 * JSON Lines file read whole. */
typedef struct source {
    FILE *f;
    char *buf;
    size_t bcap;
    long line;
    const tool_jsonl_t *jl;
    long at;
} source_t;

/* The next row's columns. @returns 1, 0 at the end, -1 bad (message printed). */
static int next_row(source_t *s, const char *path, int n_cols, char **cols, long *ret_line) {
    if (s->jl) {
        if (s->at == s->jl->n_rows) {
            return 0;
        }
        tool_jsonl_row(s->jl, s->at++, cols, ret_line);
        return 1;
    }
    while (getline(&s->buf, &s->bcap, s->f) >= 0) {
        *ret_line = ++s->line;
        if (!*trim(s->buf)) {
            continue;
        }
        int nc = tool_csv_split(s->buf, cols, MAX_COLS);
        if (nc != n_cols) {
            fprintf(stderr, "%s:%ld: %d columns where the header has %d%s\n", path, s->line,
                    nc < 0 ? 0 : nc, n_cols, nc < 0 ? " (unterminated quote?)" : "");
            return -1;
        }
        return 1;
    }
    return 0;
}

/* Read, check and convert every row. @returns the row count or -1 (message printed). */
static long read_rows(source_t *src, const char *path, char **header, int n_cols,
                      const mapping_t *m, row_t **ret) {
    row_t *rows = NULL;
    long n = 0, cap = 0, line = 1;
    char *cols[MAX_COLS];
    char at[512];
    int got;
    while ((got = next_row(src, path, n_cols, cols, &line)) == 1) {
        if (n == cap) {
            cap = cap ? 2 * cap : 4096;
            row_t *r = realloc(rows, (size_t)cap * sizeof(*r));
            if (!r) {
                goto oom;
            }
            rows = r;
        }
        row_t *r = &rows[n];
        memset(r, 0, sizeof(*r));
        r->line = line;
        const char *t = text(&m->ts, cols);
        if (!t || parse_time(m, t, &r->ts_ms) < 0) {
            fprintf(stderr, "%s: '%s' is not a time in format %s\n",
                    where(at, sizeof(at), path, line, m->ts.col, m->ts.name), t ? t : "",
                    m->ts_format[0] ? m->ts_format : "s");
            goto bad;
        }
        const char *uid = text(&m->user_id, cols);
        if (!uid || !*uid) {
            fprintf(stderr, "%s: empty user id\n",
                    where(at, sizeof(at), path, line, m->user_id.col, m->user_id.name));
            goto bad;
        }
        char eid[64];
        snprintf(eid, sizeof(eid), "row-%ld", line);
        const char *e = text(&m->event_id, cols);
        const char *ty = text(&m->type, cols);
        const char *it = text(&m->item, cols), *ca = text(&m->category, cols);
        r->uid = strdup(uid);
        r->eid = strdup(e && *e ? e : eid);
        r->type = strdup(ty && *ty ? ty : "event");
        r->item = it && *it ? strdup(it) : NULL;
        r->category = ca && *ca ? strdup(ca) : NULL;
        if (!r->uid || !r->eid || !r->type || (it && *it && !r->item) ||
            (ca && *ca && !r->category)) {
            goto oom;
        }
        n++;
        int k = m->amount.kind == SRC_NONE
                    ? 0
                    : number(&m->amount, cols, header, path, line, &r->amount);
        if (k < 0) {
            goto bad;
        }
        r->has_amount = k == 1;
        for (int a = 0; a < m->n_attrs; a++) {
            double v;
            k = number(&m->attrs[a], cols, header, path, line, &v);
            if (k < 0) {
                goto bad;
            }
            if (k == 1) {
                r->attrs[r->n_attrs++] = (ch_attr_t){m->attr_names[a], strlen(m->attr_names[a]), v};
            }
        }
    }
    *ret = rows;
    if (got == 0) {
        return n;
    }
    goto bad;
oom:
    fprintf(stderr, "cohort-produce: out of memory at %s:%ld\n", path, line);
bad:
    *ret = rows;
    return -1 - n; /* the caller frees the n rows read */
}

static void mapping_done(mapping_t *m) {
    src_t *all[] = {&m->user_id, &m->event_id, &m->ts,      &m->type,
                    &m->amount,  &m->item,     &m->category};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        free(all[i]->literal);
    }
    for (int i = 0; i < m->n_attrs; i++) {
        free(m->attrs[i].literal);
    }
}

static void free_rows(row_t *rows, long n) {
    for (long i = 0; i < n; i++) {
        free(rows[i].uid);
        free(rows[i].eid);
        free(rows[i].type);
        free(rows[i].item);
        free(rows[i].category);
    }
    free(rows);
}

int main(int argc, char **argv) {
    const char *brokers = NULL, *map_path = NULL, *topic = "events", *framing = "confluent";
    const char *format = NULL;
    double rate = 0, schema_id = 1;
    bool quiet = false, check = false;
    static const struct option opts[] = {{"brokers", required_argument, NULL, 'b'},
                                         {"mapping", required_argument, NULL, 'm'},
                                         {"topic", required_argument, NULL, 't'},
                                         {"rate", required_argument, NULL, 'r'},
                                         {"framing", required_argument, NULL, 'F'},
                                         {"schema-id", required_argument, NULL, 'S'},
                                         {"check", no_argument, NULL, 'c'},
                                         {"quiet", no_argument, NULL, 'q'},
                                         {"format", required_argument, NULL, 'f'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    int opt;
    while ((opt = getopt_long(argc, argv, "b:m:t:r:qh", opts, NULL)) != -1) {
        switch (opt) {
        case 'b':
            brokers = optarg;
            break;
        case 'm':
            map_path = optarg;
            break;
        case 't':
            topic = optarg;
            break;
        case 'r':
            if (tool_parse_number(optarg, 0, 1e9, &rate) < 0) {
                fprintf(stderr, "cohort-produce: --rate takes a number >= 0, got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'F':
            framing = optarg;
            break;
        case 'S':
            if (tool_parse_number(optarg, 0, 2147483647, &schema_id) < 0) {
                fprintf(stderr, "cohort-produce: --schema-id takes an id, got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'c':
            check = true;
            break;
        case 'f':
            if (strcmp(optarg, "csv") != 0 && strcmp(optarg, "jsonl") != 0) {
                fprintf(stderr, "cohort-produce: --format takes csv or jsonl, got '%s'\n", optarg);
                return 2;
            }
            format = optarg;
            break;
        case 'q':
            quiet = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if ((!brokers && !check) || !map_path || optind != argc - 1) {
        fprintf(stderr, "cohort-produce: --brokers, --mapping and one FILE are required\n");
        usage(stderr);
        return 2;
    }
    const char *path = argv[optind];
    FILE *f = fopen(path, "re");
    if (!f) {
        fprintf(stderr, "cohort-produce: %s: %s\n", path, strerror(errno));
        return 1;
    }
    size_t plen = strlen(path);
    jsonl_input = format ? strcmp(format, "jsonl") == 0
                         : (plen > 6 && strcmp(path + plen - 6, ".jsonl") == 0) ||
                               (plen > 7 && strcmp(path + plen - 7, ".ndjson") == 0);
    char *hbuf = NULL, *header[MAX_COLS];
    size_t hcap = 0;
    tool_jsonl_t jl = {0};
    source_t src = {.f = f, .line = 1};
    int n_cols = -1;
    if (jsonl_input) {
        if (tool_jsonl_read(f, path, MAX_COLS, &jl) == 0) {
            n_cols = jl.n_names;
            for (int i = 0; i < n_cols; i++) {
                header[i] = jl.names[i];
            }
            src.jl = &jl;
        }
    } else {
        n_cols = getline(&hbuf, &hcap, f) < 0 ? -1 : tool_csv_split(hbuf, header, MAX_COLS);
        for (int i = 0; i < n_cols; i++) {
            header[i] = trim(header[i]);
        }
    }
    mapping_t m = {.n_attrs = 0};
    row_t *rows = NULL;
    long n = -1;
    int rc = 1;
    if (n_cols <= 0 && !jsonl_input) {
        fprintf(stderr, "%s:1: no header line of column names\n", path);
    } else if (n_cols == 0) {
        fprintf(stderr, "%s: no JSON objects with fields\n", path);
    } else if (n_cols > 0 && read_mapping(map_path, path, header, n_cols, &m) == 0) {
        n = read_rows(&src, path, header, n_cols, &m, &rows);
    }
    free(src.buf);
    fclose(f);
    if (n >= 0) {
        qsort(rows, (size_t)n, sizeof(*rows), by_time);
        if (check) {
            printf("%s: %ld rows, events from %lld to %lld ms, nothing sent (--check)\n", path, n,
                   n ? (long long)rows[0].ts_ms : 0LL, n ? (long long)rows[n - 1].ts_ms : 0LL);
            rc = 0;
        } else {
            tool_out_t o;
            if (tool_out_open(&o, "cohort-produce", brokers, topic, framing, (int32_t)schema_id,
                              rate, quiet) == 0) {
                o.total = (uint64_t)n;
                rc = 0;
                for (long i = 0; i < n && !tool_stop && rc == 0; i++) {
                    const row_t *r = &rows[i];
                    ch_event_view_t ev = {.event_id = r->eid,
                                          .event_id_len = strlen(r->eid),
                                          .user_id = r->uid,
                                          .user_id_len = strlen(r->uid),
                                          .ts_ms = r->ts_ms,
                                          .type = r->type,
                                          .type_len = strlen(r->type),
                                          .has_amount = r->has_amount,
                                          .amount = r->amount,
                                          .item = r->item,
                                          .item_len = r->item ? strlen(r->item) : 0,
                                          .category = r->category,
                                          .category_len = r->category ? strlen(r->category) : 0,
                                          .attrs = r->attrs,
                                          .n_attrs = r->n_attrs};
                    rc = tool_out_event(&o, &ev) < 0 ? 1 : 0;
                }
                rc = tool_out_close(&o) < 0 || rc || tool_stop ? 1 : 0;
            }
        }
    }
    free_rows(rows, n >= 0 ? n : -1 - n);
    mapping_done(&m);
    free(hbuf);
    tool_jsonl_free(&jl);
    return rc;
}

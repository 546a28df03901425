/*
 * tool_csv.c - the CSV line splitter of cohort-replay and cohort-produce.
 */
#include "tool_csv.h"

int tool_csv_split(char *line, char **cols, int max) {
    int n = 0;
    char *p = line;
    for (;;) {
        if (n == max) {
            return -1;
        }
        char *out = p;
        cols[n++] = out;
        if (*p == '"') {
            p++;
            for (;;) {
                if (!*p) {
                    return -1; /* unterminated quote */
                }
                if (*p == '"' && p[1] == '"') {
                    *out++ = '"';
                    p += 2;
                } else if (*p == '"') {
                    p++;
                    break;
                } else {
                    *out++ = *p++;
                }
            }
            if (*p && *p != ',' && *p != '\n' && *p != '\r') {
                return -1;
            }
        } else {
            while (*p && *p != ',' && *p != '\n' && *p != '\r') {
                *out++ = *p++;
            }
        }
        char sep = *p;
        *out = '\0';
        if (sep != ',') {
            return n;
        }
        p++;
    }
}

"""Markdown report and PNG plots of a tools/bench run (report.json -> report.md, *.png).

Also usable alone, to redraw a report: /usr/bin/python3 tools/bench/report.py OUT_DIR
"""
import json
import os
import sys

# the targets of issue 5, reported against (never asserted)
TARGETS = {"ratio_to_ceiling": 0.7, "ratio_to_baseline": 20.0, "p99_over_ceiling_ms": 2.0,
           "state_bytes_per_user": 300.0, "per_event_cost_growth": 1.25,
           "ready_from_snapshot_s": 5.0, "ready_from_changelog_s": 20.0,  # + issue 12's
           "eos_ratio": 0.8}


def _fmt(v, digits=0):
    return f"{v:,.{digits}f}" if isinstance(v, (int, float)) else "-"


def _verdict(ok):
    return "met" if ok else "**short**"


def _plots(r, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    files = []
    t = r.get("throughput")
    if t:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        names = ["ceiling (Kafka I/O)", "cohortd", "Python baseline"]
        vals = [t["ceiling"]["events_per_s"], t["cohortd"]["events_per_s"],
                t["baseline"]["events_per_s"]]
        ax.bar(names, vals, color=["#999999", "#1f77b4", "#ff7f0e"])
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:,.0f}", ha="center", va="bottom")
        ax.set_ylabel("events/s")
        ax.set_title("Throughput on the embedded broker")
        fig.tight_layout()
        fig.savefig(os.path.join(out, "throughput.png"), dpi=100)
        plt.close(fig)
        files.append("throughput.png")
    lat = r.get("latency")
    if lat and "cohortd" in lat:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for name, color in (("ceiling", "#999999"), ("cohortd", "#1f77b4")):
            b = lat[name]["buckets"]
            total = sum(c for _, c in b)
            acc, xs, ys = 0, [], []
            for v, c in b:
                acc += c
                xs.append(v / 1e3)
                ys.append(acc / total)
            ax.plot(xs, ys, label=f"{name} (p99 {lat[name]['p99'] / 1e3:.1f} ms)", color=color)
        ax.set_xscale("log")
        ax.set_xlabel("end-to-end latency (ms)")
        ax.set_ylabel("fraction of events")
        ax.set_title(f"Latency at {lat['rate']:,} events/s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out, "latency.png"), dpi=100)
        plt.close(fig)
        files.append("latency.png")
    mem = r.get("memory")
    if mem:
        fig, ax1 = plt.subplots(figsize=(6, 3.5))
        u = [m["users"] for m in mem]
        ax1.plot(u, [m["rss_bytes"] / 2**20 for m in mem], "o-", label="RSS (MiB)")
        ax1.set_xscale("log")
        ax1.set_yscale("log")
        ax1.set_xlabel("users")
        ax1.set_ylabel("RSS (MiB)")
        ax2 = ax1.twinx()
        ax2.plot(u, [m["cpu_s_per_m_events"] for m in mem], "s--", color="#d62728",
                 label="CPU s per million events")
        ax2.set_ylabel("CPU s per million events")
        ax2.set_ylim(bottom=0)
        ax1.set_title("Memory and per-event cost against users")
        fig.legend(loc="upper left", bbox_to_anchor=(0.12, 0.88))
        fig.tight_layout()
        fig.savefig(os.path.join(out, "memory.png"), dpi=100)
        plt.close(fig)
        files.append("memory.png")
    sc = r.get("scaling")
    if sc:
        fig, axs = plt.subplots(1, 2, figsize=(8, 3.5), sharey=True)
        for ax, key, var in ((axs[0], "features", "d"), (axs[1], "segments", "k")):
            xs = [e[var] for e in sc[key]]
            ax.plot(xs, [e["events_per_s"] for e in sc[key]], "o-")
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs)
            ax.set_xticklabels([str(x) for x in xs])
            ax.set_xlabel(f"{var} ({key}; {'k = 16' if var == 'd' else 'd = 16'})")
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
        axs[0].set_ylabel("events/s")
        fig.suptitle("cohortd throughput against features and segments")
        fig.tight_layout()
        fig.savefig(os.path.join(out, "scaling.png"), dpi=100)
        plt.close(fig)
        files.append("scaling.png")
    return files


def write_report(r, out):
    files = _plots(r, out)
    m = r.get("machine", {})
    s = r.get("settings", {})
    L = [f"# cohortd benchmark{' (quick)' if r.get('quick') else ''}", "",
         f"{r.get('started', '')}, commit {m.get('commit', '?')}, {m.get('cpu', '?')}, "
         f"{m.get('cores', '?')} cores, librdkafka {m.get('librdkafka', '?')}, "
         f"{r.get('seconds', 0):.0f} s in all. Embedded broker (librdkafka mock cluster), "
         f"{s.get('partitions')} partitions; every system under test uses the same client "
         f"settings (fetch.wait.max.ms = {s.get('fetch_wait_max_ms')}). Rates are measured "
         "from the output topics' high watermarks between 10% and 90% of the outputs.", ""]
    summary = []
    t = r.get("throughput")
    if t:
        rc, rb = t["ratio_to_ceiling"], t["ratio_to_baseline"]
        summary.append(("cohortd / ceiling throughput", f"{rc:.2f}",
                        f">= {TARGETS['ratio_to_ceiling']}",
                        _verdict(rc >= TARGETS["ratio_to_ceiling"])))
        summary.append(("cohortd / Python baseline throughput", f"{rb:.1f}",
                        f">= {TARGETS['ratio_to_baseline']:.0f}",
                        _verdict(rb >= TARGETS["ratio_to_baseline"])))
    if fz := r.get("featurize"):
        card = fz["datasets"][0]
        eps = card["avro"]["events_per_s"]
        summary.append(("featurize events/s, one core (card-like users, to Avro)",
                        f"{eps:,.0f}", ">= 1,000,000", _verdict(eps >= 1e6)))
        for d in fz["datasets"]:
            summary.append((f"featurize / numpy, {d['name']} users (to Avro)",
                            f"{d['avro_over_numpy']:.1f}", ">= 10",
                            _verdict(d["avro_over_numpy"] >= 10)))
    lat = r.get("latency")
    if lat and "cohortd" in lat and "ceiling" in lat:
        dp = (lat["cohortd"]["p99"] - lat["ceiling"]["p99"]) / 1e3
        summary.append(("p99 latency over the ceiling's", f"{dp:+.1f} ms",
                        f"<= {TARGETS['p99_over_ceiling_ms']:.0f} ms",
                        _verdict(dp <= TARGETS["p99_over_ceiling_ms"])))
    mem = r.get("memory")
    if mem:
        b = mem[0]["state_bytes_per_user"]
        summary.append(("state bytes per user (d = 16)", f"{b:.0f}",
                        f"<= {TARGETS['state_bytes_per_user']:.0f}",
                        _verdict(b <= TARGETS["state_bytes_per_user"])))
        if len(mem) > 1:
            g = mem[-1]["cpu_s_per_m_events"] / mem[0]["cpu_s_per_m_events"]
            summary.append((f"CPU per event, {mem[-1]['users']:,} / {mem[0]['users']:,} users",
                            f"{g:.2f}", f"flat (<= {TARGETS['per_event_cost_growth']})",
                            _verdict(g <= TARGETS["per_event_cost_growth"])))
    eos = r.get("eos")
    if eos:
        ok = eos["ratio"] >= TARGETS["eos_ratio"]
        summary.append(("exactly_once / at_least_once throughput (100ms)", f"{eos['ratio']:.2f}",
                        f">= {TARGETS['eos_ratio']}", _verdict(ok)))
    rs = r.get("restore")
    if rs:
        big = rs[-1]
        for source, key in (("snapshot", "ready_from_snapshot_s"),
                            ("changelog", "ready_from_changelog_s")):
            v = big[source]["assigned_to_ready_s"]
            summary.append((f"{big['users']:,} users ready from the {source} (after assignment)",
                            f"{v:.2f} s", f"<= {TARGETS[key]:.0f} s", _verdict(v <= TARGETS[key])))
    if summary:
        L += ["## Against the targets", "", "| measure | value | target | |", "|---|---:|---|---|"]
        L += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in summary]
        L.append("")
    if t:
        L += ["## Throughput", "", "Same pre-loaded input (events of "
              f"{s.get('users_per_run'):,} users) on a fresh broker for each system; the "
              "ceiling consumes and produces one profile and one risk record per event of "
              f"cohortd's sizes ({t['cohortd']['sizes']['profiles']} and "
              f"{t['cohortd']['sizes']['risk']} bytes) with no processing.", "",
              "| system | events per run | events/s (median) | runs | x ceiling | "
              "CPU s per million events | CPU use (cores) |",
              "|---|---:|---:|---|---:|---:|---:|"]
        for k, name in (("ceiling", "ceiling (cohort-passthrough)"),
                        ("cohortd", "cohortd (d = 16, k = 16, MLP)"),
                        ("baseline", "Python baseline (confluent-kafka + numpy)")):
            e = t[k]
            ratio = e["events_per_s"] / t["ceiling"]["events_per_s"]
            runs = ", ".join(f"{x:,}" for x in e.get("runs", [round(e["events_per_s"])]))
            L.append(f"| {name} | {e['events']:,} | {_fmt(e['events_per_s'])} | {runs} | "
                     f"{ratio:.2f} | {e['cpu_s_per_m_events']:.2f} | {e['cpu_utilisation']:.2f} |")
        L += ["", f"Per event, the Python baseline spends "
              f"{t['cpu_ratio_baseline_to_cohortd']:.0f} times cohortd's CPU time.", "",
              "![throughput](throughput.png)", ""]
    if parity := r.get("parity"):
        L += ["## The baseline is the same job", "",
              f"On {parity['events']:,} events, the Python baseline's risk scores match "
              f"cohortd's for {parity['risk_compared']:,} events (max |diff| "
              f"{parity['max_score_diff']:.1e}) and its feature vectors for "
              f"{parity['profiles_compared']:,} profile updates (max relative diff "
              f"{parity['max_feature_rel_diff']:.1e}).", ""]
    if lat and "cohortd" in lat:
        L += ["## Latency", "", f"{lat['rate']:,} events/s (50% of cohortd's measured rate) "
              f"for {lat['seconds']} s after a 2 s warm-up, from cohort-gen's send time to "
              "arrival at a consumer of the risk topic (HDR-style histogram, 1.6% "
              "resolution).", "",
              "| system | outputs | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |",
              "|---|---:|---:|---:|---:|---:|---:|"]
        for k in ("ceiling", "cohortd"):
            h = lat[k]
            L.append(f"| {k} | {h['count']:,} | {h['p50'] / 1e3:.1f} | {h['p90'] / 1e3:.1f} | "
                     f"{h['p99'] / 1e3:.1f} | {h['p999'] / 1e3:.1f} | {h['max'] / 1e3:.1f} |")
        L += ["", "![latency](latency.png)", ""]
    if mem:
        L += ["## Memory and users", "", "One cohortd grown in steps; at each step it is "
              "paused, events of random users among all of them are pre-loaded, and the rate "
              "and CPU per event are measured on a table of that size.", "",
              "| users | RSS MiB | state bytes/user | RSS growth bytes/user | events/s | "
              "CPU s per million events |", "|---:|---:|---:|---:|---:|---:|"]
        for e in mem:
            L.append(f"| {e['users']:,} | {e['rss_bytes'] / 2**20:,.0f} | "
                     f"{e['state_bytes_per_user']:.0f} | "
                     f"{_fmt(e.get('rss_delta_bytes_per_user'))} | {_fmt(e['events_per_s'])} | "
                     f"{e['cpu_s_per_m_events']:.2f} |")
        L += ["", "![memory](memory.png)", ""]
    if sc := r.get("scaling"):
        L += ["## Scaling", "", "| d features | k segments | events/s | CPU s per million "
              "events |", "|---:|---:|---:|---:|"]
        for e in sc["features"] + [x for x in sc["segments"] if x["k"] != 16]:
            L.append(f"| {e['d']} | {e['k']} | {_fmt(e['events_per_s'])} | "
                     f"{e['cpu_s_per_m_events']:.2f} |")
        L += ["", "![scaling](scaling.png)", ""]
    if rs:
        L += ["## Restore", "", "cohortd processes one event per user with the changelog on "
              "and stops (its shutdown snapshot is written then); it is started again from the "
              "snapshot (`state.dir`), and once more from the changelog alone (snapshot "
              "deleted). Ready = `/readyz` 200. Start to ready includes the process start and "
              "the group join, which on the embedded broker waits about session.timeout.ms - "
              "1 s for the previous member (a mock-only delay); assignment to ready is the "
              "restore itself. d = 4 features (state records of about 100 bytes, so a million "
              "fit the broker's 5 MiB per partition).", "",
              "| users | partitions | source | start to ready s | assignment to ready s | "
              "users/s | changelog records read | shutdown snapshot write s |",
              "|---:|---:|---|---:|---:|---:|---:|---:|"]
        for e in rs:
            for source in ("snapshot", "changelog"):
                x = e[source]
                L.append(f"| {e['users']:,} | {e['partitions']} | {source} | "
                         f"{x['start_to_ready_s']:.2f} | {x['assigned_to_ready_s']:.2f} | "
                         f"{_fmt(x['users_per_s'])} | {x['changelog_records']:,} | "
                         f"{_fmt(e.get('snapshot_write_s'), 2) if source == 'snapshot' else ''} |")
        L.append("")
    if eos:
        L += ["## Exactly-once", "", f"{eos['events']:,} pre-loaded events, the shipped config "
              "with the state changelog on, `processing.guarantee` at_least_once and "
              "exactly_once (one transaction per `commit.interval` = 100 ms; each commit "
              "blocks the loop), median of the runs; rates from cohortd's "
              "`events_processed_total` (transaction markers inflate the topics' watermarks).",
              "", "| guarantee | events/s (median) | runs | CPU s per million events | "
              "seconds in commits |", "|---|---:|---|---:|---:|"]
        for g, name in (("at_least_once", "at_least_once"),
                        ("exactly_once", "exactly_once (commit.interval 100ms)"),
                        ("exactly_once_1s", "exactly_once (commit.interval 1s)")):
            e = eos[g]
            L.append(f"| {name} | {_fmt(e['events_per_s'])} | "
                     f"{', '.join(f'{x:,}' for x in e['runs'])} | "
                     f"{e['cpu_s_per_m_events']:.2f} | {_fmt(e.get('txn_commit_s'), 2)} |")
        L += ["", f"Ratio {eos['ratio']:.2f} at the default commit.interval, "
              f"{eos['ratio_1s']:.2f} at 1 s. Each commit blocks the loop; on the embedded "
              "broker most of it is librdkafka registering the changelog partitions, first "
              "written at the flush, with the transaction before their records go out.", ""]
    if rf := r.get("refresh"):
        ps = rf["pass"]
        L += ["## Segment refresh", "", f"One cohortd with {rf['users']:,} users (each seen once, "
              "the shipped 16 features, k = 16), `POST /segments/refresh` under a paced load of "
              f"{rf['rate']:,} events/s; the same load for as long again with no refresh. The "
              "pass reads every user's vector, fits (Lloyd from the live centroids and 10 "
              "k-means++ seedings on a sample of at most 65,536 users, the best refined on all) "
              "and reassigns every user, in slices between batches.", "",
              "| users | pass s | s per million users | fit s | users moved |",
              "|---:|---:|---:|---:|---:|",
              f"| {ps['users']:,} | {ps['seconds']:.2f} | {rf['seconds_per_m_users']:.1f} | "
              f"{ps['fit_seconds']:.2f} | {ps['moved']:,} |", "",
              "| load | window s | batches | batch duration p99 s | end-to-end p99 s (from "
              "Kafka timestamp) |", "|---|---:|---:|---:|---:|"]
        for mode in ("without", "during"):
            e = rf[mode]
            L.append(f"| {mode} a refresh | {e['window_s']:.1f} | {e['batches']:,} | "
                     f"{_fmt(e['batch_p99_s'], 4)} | {_fmt(e['e2e_p99_s'], 4)} |")
        L += ["", "p99 values are histogram bucket bounds (the bucket holding the 99th "
              "percentile).", ""]
    if fz := r.get("featurize"):
        L += ["## Featurize", "", f"`cohortd featurize` with the shipped {fz['features']} "
              f"features on CSV files of {fz['events']:,} events of cohortd's own fields "
              "(event_id,user_id,ts,type,amount), one row per event, on one core: to an Avro "
              "container (`--order file`, streaming) and to CSV (`--order time`, the default: "
              "read, sorted, folded). Against `tools/bench/featurize_numpy.py`, the same "
              "features vectorised per user with numpy (np.loadtxt, cumulative sums, rows "
              "saved with np.save), which must give the same values. Best of the runs, whole "
              "processes (start, read, compute, write).", "",
              "| events per user | users | cohortd to Avro /s | cohortd to CSV /s | numpy /s | "
              "Avro / numpy | CSV / numpy | CPU per event, numpy / cohortd (Avro) | largest "
              "difference |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for d in fz["datasets"]:
            L.append(f"| {d['name']} ({d['events_per_user']}) | {d['users']:,} | "
                     f"{d['avro']['events_per_s']:,.0f} | {d['csv']['events_per_s']:,.0f} | "
                     f"{d['numpy']['events_per_s']:,.0f} | {d['avro_over_numpy']:.1f} | "
                     f"{d['csv_over_numpy']:.1f} | {d['avro_cpu_over_numpy']:.1f} | "
                     f"{d['max_rel_diff']:.1e} |")
        L += ["", "numpy's cost is per user (a few dozen array calls each), so its rate grows "
              "with the events per user; cohortd's is per event.", ""]
    if tr := r.get("trees"):
        L += ["## Tree ensembles", "", f"An XGBoost model of {tr['trees']} trees of depth "
              f"{tr['depth']} on d = {tr['d']} (exported by tools/export_onnx.py), "
              f"{tr['rows']:,} rows in memory. cohortd: `cohort-bench-trees` (the daemon's "
              f"evaluator, batches of {tr['batch']}, one thread); XGBoost {tr['xgboost']}: "
              "`inplace_predict` on the same float32 rows in the same run. Reasons: "
              "cohortd's TreeSHAP one row at a time (as alerts are explained) against "
              "`predict(pred_contribs=True)` on one thread.", "",
              "| measure | cohortd rows/s | XGBoost rows/s | ratio |", "|---|---:|---:|---:|",
              f"| scores, XGBoost on 1 thread | {tr['rows_per_s']:,.0f} | "
              f"{tr['xgboost_rows_per_s_1_thread']:,.0f} | {tr['ratio_1_thread']:.2f} |",
              f"| scores, XGBoost on every core | {tr['rows_per_s']:,.0f} | "
              f"{tr['xgboost_rows_per_s_all_threads']:,.0f} | {tr['ratio_all_threads']:.2f} |",
              f"| Shapley values | {tr['explained_rows_per_s']:,.0f} | "
              f"{tr['xgboost_shap_rows_per_s_1_thread']:,.0f} | {tr['shap_ratio_1_thread']:.2f} |",
              "", f"Largest difference between the two scores: "
              f"{tr['max_abs_diff_vs_xgboost']:.1e}.", ""]
    L += ["Raw numbers: report.json."]
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(L) + "\n")
    return files


if __name__ == "__main__":
    d = sys.argv[1]
    with open(os.path.join(d, "report.json")) as f:
        write_report(json.load(f), d)

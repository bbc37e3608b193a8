"""The benchmark's targets, its printed tables (Markdown) and its chart.

The printed tables are the "Latest results" and "Targets" sections of docs/performance.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# The targets (issue 6), measured against the anchors of shared/POSTGRES-LOADING.md.
LOAD_TARGET = 0.9  # x psql \copy FROM binary (issue 14)
EXTRACT_TARGET = 1.0  # x psql \copy TO csv
PARTITION_TARGET = 1.3  # x append of the same rows
MERGE_TARGET = 1.5  # x append of the same rows (issue 14)
REPLACE_TARGET = 1.0  # x psql \copy FROM binary into an existing empty table (issue 14)
RSS_GROWTH_TARGET = 1.10  # peak RSS at 4N / at N
SIZE_TARGET = 1.15  # loaded bench table / its source table (pg_table_size)
PARSE_TARGET_SECONDS = 1.0  # DagBag of 100 source configs (issue 14)
ETL_PAGE_TARGET_SECONDS = 1.0  # the ETL page's answer for 100 sources and a year of audit rows (issue 24)
CHECKS_TARGET = 1.15  # a load with a typical table's quality checks / the same load without (issue 23)
# Issue 25: a whole table copied end to end, and the merge against the server's own.
E2E_PSQL_TARGET = 0.8  # x psql COPY TO STDOUT | psql COPY FROM STDIN (binary), both whole processes
E2E_PEER_TARGET = 2.0  # x the fastest peer of the same round (Sling, dlt)
E2E_RSS_TARGET_MIB = 250  # peak RSS of `etl.cli run` (its process tree)
MERGE_FLOOR_TARGET = 1.15  # x the server's own DELETE ... USING + INSERT ... SELECT of the same rows


def _method(results: dict[str, Any], section: str, name: str) -> dict[str, Any] | None:
    block = results.get(section) or {}
    return next((m for m in block.get("methods", []) if m["method"] == name and "ratio" in m), None)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(name: str, goal: str, measured: Any, ok: Any, text: str) -> None:
        """``measured`` and ``ok`` are None when the figure was not measured."""
        out.append({"target": name, "goal": goal, "measured": measured,
                    "result": "n/a" if ok is None else ("PASS" if ok else "MISS"), "text": text})

    load = _method(results, "load", "sndw")
    add("load speed", f">= {LOAD_TARGET}x psql binary COPY", load and load["ratio"],
        load and load["ratio"] >= LOAD_TARGET, f"{load['ratio']:.2f}x" if load else "not measured")
    if load and "process_ratio" in load:
        add("load speed, whole process", f">= {LOAD_TARGET}x psql binary COPY (both whole processes)",
            load["process_ratio"], load["process_ratio"] >= LOAD_TARGET, f"{load['process_ratio']:.2f}x")
    extract = _method(results, "extract", "sndw")
    add("extract speed", f">= {EXTRACT_TARGET}x psql CSV COPY TO", extract and extract["ratio"],
        extract and extract["ratio"] >= EXTRACT_TARGET, f"{extract['ratio']:.2f}x" if extract else "not measured")
    part = _method(results, "write_modes", "partition")
    add("partition replace", f"<= {PARTITION_TARGET}x append", part and part["ratio"],
        part and part["ratio"] <= PARTITION_TARGET, f"{part['ratio']:.2f}x" if part else "not measured")
    merge = _method(results, "write_modes", "merge")
    add("merge", f"<= {MERGE_TARGET}x append", merge and merge["ratio"],
        merge and merge["ratio"] <= MERGE_TARGET, f"{merge['ratio']:.2f}x" if merge else "not measured")
    if merge and "keyed_ratio" in merge:
        add("merge vs append into the same keyed table", f"<= {MERGE_TARGET}x append into the merge's table",
            merge["keyed_ratio"], merge["keyed_ratio"] <= MERGE_TARGET, f"{merge['keyed_ratio']:.2f}x")
    floor = (results.get("write_modes") or {}).get("server_merge") or {}
    add("merge vs the server's own merge", f"<= {MERGE_FLOOR_TARGET}x DELETE ... USING + INSERT ... SELECT",
        floor.get("sndw_ratio"), None if "sndw_ratio" not in floor else floor["sndw_ratio"] <= MERGE_FLOOR_TARGET,
        f"{floor['sndw_ratio']:.2f}x" if "sndw_ratio" in floor else "not measured")
    for table, block in (results.get("e2e") or {}).items():
        methods = {m["method"]: m for m in block["methods"] if "ratio" in m}
        for name, what in (("sndw_cli", "etl.cli run"), ("sndw_steps", "extract + load steps")):
            m = methods.get(name)
            if m is None:
                continue
            add(f"end to end {table}: {what} vs psql pipe", f">= {E2E_PSQL_TARGET}x psql COPY pipe", m["ratio"],
                m["ratio"] >= E2E_PSQL_TARGET, f"{m['ratio']:.2f}x")
            if "peer_ratio" in m:
                add(f"end to end {table}: {what} vs fastest peer", f">= {E2E_PEER_TARGET}x the fastest peer",
                    m["peer_ratio"], m["peer_ratio"] >= E2E_PEER_TARGET,
                    f"{m['peer_ratio']:.2f}x ({m['fastest_peer']})")
            else:
                add(f"end to end {table}: {what} vs fastest peer", f">= {E2E_PEER_TARGET}x the fastest peer", None,
                    None, "no peer measured")
        cli = methods.get("sndw_cli")
        if cli:
            add(f"end to end {table}: etl.cli run peak RSS", f"<= {E2E_RSS_TARGET_MIB} MiB", cli["peak_rss_mib"],
                cli["peak_rss_mib"] <= E2E_RSS_TARGET_MIB, f"{cli['peak_rss_mib']:.0f} MiB")
        exact = [m["method"] for m in block["methods"] if m["method"].startswith("sndw") and m.get("exact") is False]
        add(f"end to end {table}: sndw's copy exact", "row count and row hash equal to the source's",
            not exact, not exact, "exact" if not exact else f"not exact: {', '.join(exact)}")
    for block in results.get("replace") or []:
        rep = next((m for m in block["methods"] if m["method"] == "sndw" and "ratio" in m), None)
        add(f"replace (wal_level {block['wal_level']})", f">= {REPLACE_TARGET}x psql binary COPY into an empty table",
            rep and rep["ratio"], rep and rep["ratio"] >= REPLACE_TARGET, f"{rep['ratio']:.2f}x" if rep else "not measured")
    for row in results.get("memory") or []:
        add(f"{row['step']} RSS at 4N", f"<= {RSS_GROWTH_TARGET:.2f}x RSS at N", row["growth"],
            row["growth"] <= RSS_GROWTH_TARGET,
            f"{row['growth']:.2f}x ({row['rss_mib_n']:.0f} -> {row['rss_mib_4n']:.0f} MiB)")
    size = results.get("size")
    add("loaded table size", f"<= {SIZE_TARGET}x its source table", size and size["ratio"],
        size and size["ratio"] <= SIZE_TARGET, f"{size['ratio']:.2f}x" if size else "not measured")
    checks = _method(results, "checks", "with")
    add("quality checks overhead", f"<= {CHECKS_TARGET:.2f}x the same load without checks",
        checks and checks["ratio"], checks and checks["ratio"] <= CHECKS_TARGET,
        f"{checks['ratio']:.3f}x" if checks else "not measured")
    parse = {p["sources"]: p for p in results.get("parse") or []}
    if 100 in parse:
        add("parse 100 sources", f"< {PARSE_TARGET_SECONDS:.0f} s", parse[100]["seconds"],
            parse[100]["seconds"] < PARSE_TARGET_SECONDS, f"{parse[100]['seconds']:.2f} s")
    else:
        add("parse 100 sources", f"< {PARSE_TARGET_SECONDS:.0f} s", None, None, "not measured (BENCH_PARSE_SOURCES)")
    page = results.get("etl_page")
    add("ETL page, 100 sources x a year", f"< {ETL_PAGE_TARGET_SECONDS:.0f} s", page and page["seconds"],
        page and page["seconds"] < ETL_PAGE_TARGET_SECONDS if page and page["sources"] >= 100 else None,
        f"{page['seconds']:.2f} s ({page['sources']} sources x {page['days']} days)" if page else "not measured")
    return out


def _n(value: float | int | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _ratio(m: dict[str, Any], digits: int = 2) -> str:
    """The median of the per-round paired ratios, with their range over the rounds."""
    spread = m.get("ratio_range")
    text = f"{m['ratio']:.{digits}f}"
    if spread and len(m.get("rounds") or []) > 1:
        text += f" ({spread[0]:.{digits}f}-{spread[1]:.{digits}f})"
    return text


def _speed_table(block: dict[str, Any], ref_label: str, total_rows: int) -> list[str]:
    """``s`` and ``x`` time the method's own work (sndw: connect to commit, imports done; psql: its
    process); ``x whole process`` times both sides as whole processes."""
    lines = [f"| method | rows | s | rows/s | x {ref_label} | x {ref_label}, whole process | peak RSS MiB |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for m in block["methods"]:
        note = m.get("note") or ""
        if m.get("rows_per_s") and m["rows"] < total_rows:  # a reduced N: what the full N would take
            note += f"; ~{total_rows / m['rows_per_s']:,.0f} s for {total_rows:,}"
        label = m["label"] + (f" ({note})" if note else "")
        if "ratio" not in m:
            lines.append(f"| {label} | {_n(m['rows'])} | - | - | {m['skipped']} | - | - |")
            continue
        whole = "-"
        if "process_ratio" in m:
            whole = _ratio({"ratio": m["process_ratio"], "ratio_range": m["process_ratio_range"],
                            "rounds": m.get("rounds")})
        lines.append(f"| {label} | {_n(m['rows'])} | {m['seconds']:.2f} | {_n(m['rows_per_s'])} | "
                     f"{_ratio(m)} | {whole} | {m['peak_rss_mib']:.0f} |")
    return lines


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [f"sndw benchmark: N = {meta['rows']:,} rows, ratios paired per round: median (range) of {meta['rounds']} rounds, methods interleaved; "
             f"PostgreSQL {meta['server']} (fsync {meta['settings']['fsync']}, synchronous_commit "
             f"{meta['settings']['synchronous_commit']}), {meta['cpus']} CPUs, commit {meta['commit']}", ""]
    if results.get("load"):
        lines += ["Load: Parquet partition -> new warehouse table (wall time incl. reading Parquet)", ""]
        lines += _speed_table(results["load"], "psql binary", meta["rows"]) + [""]
    if results.get("extract"):
        lines += ["Extract: PostgreSQL table -> Parquet partition", ""]
        lines += _speed_table(results["extract"], "psql CSV", meta["rows"]) + [""]
    for table, block in (results.get("e2e") or {}).items():
        lines += [f"End to end: a PostgreSQL table of {block['columns']} columns ({table}) copied into the warehouse "
                  "(every method a whole process; exact = row count and row hash equal to the source's)", "",
                  "| method | rows | s | rows/s | x psql pipe | x fastest peer | exact | peak RSS MiB (process tree) |",
                  "|---|---:|---:|---:|---:|---:|---|---:|"]
        for m in block["methods"]:
            label = m["label"] + (f" ({m['note']})" if m.get("note") else "")
            if "ratio" not in m:
                lines.append(f"| {label} | {_n(m['rows'])} | - | - | {m['skipped'][:200]} | - | - | - |")
                continue
            peer = "-"
            if "peer_ratio" in m:
                peer = _ratio({"ratio": m["peer_ratio"], "ratio_range": m["peer_ratio_range"], "rounds": m.get("rounds")})
                peer += f" ({m['fastest_peer']})"
            if "extract_seconds" in m:
                label += f": extract {m['extract_seconds']:.2f} s + load {m['load_seconds']:.2f} s"
            exact = {True: "yes", False: "no"}.get(m.get("exact"), "-")
            lines.append(f"| {label} | {_n(m['rows'])} | {m['seconds']:.2f} | {_n(m['rows_per_s'])} | {_ratio(m)} | "
                         f"{peer} | {exact} | {m['peak_rss_mib']:.0f} |")
        lines.append("")
    if results.get("write_modes"):
        lines += ["Write modes (sndw load_files of the same rows)", "",
                  "| mode | rows | s | x append | WAL MiB | peak RSS MiB | what |", "|---|---:|---:|---:|---:|---:|---|"]
        for m in results["write_modes"]["methods"]:
            note = m["note"]
            if "keyed_ratio" in m:
                keyed = _ratio({"ratio": m["keyed_ratio"], "ratio_range": m["keyed_ratio_range"],
                                "rounds": m.get("rounds")})
                note += f"; {keyed}x append_keyed"
            if "keyed_wal_ratio" in m:
                note += f", {m['keyed_wal_ratio']:.2f}x its WAL"
            mib = m["wal_bytes"] / 2**20 if "wal_bytes" in m else None
            wal = "-" if mib is None else f"{mib:.0f}" if mib >= 10 else f"{mib:.2f}"
            lines.append(f"| {m['method']} | {_n(m['rows'])} | {m['seconds']:.2f} | {_ratio(m)} | {wal} | "
                         f"{m['peak_rss_mib']:.0f} | {note} |")
        floor = results["write_modes"].get("server_merge")
        if floor:
            spread = f" ({floor['ratio_range'][0]:.2f}-{floor['ratio_range'][1]:.2f})" if floor["rounds"] > 1 else ""
            lines += ["", f"The server alone, the same rows from a table on the server: DELETE ... USING + INSERT ... SELECT "
                          f"{floor['merge_seconds']:.2f} s, INSERT ... SELECT of new keys into the keyed table "
                          f"{floor['append_keyed_seconds']:.2f} s: a merge is {floor['ratio']:.2f}x{spread} the append "
                          f"there (connect to commit, paired per round)."]
            if "sndw_ratio" in floor:
                own = floor["sndw_ratio_range"]
                lines += ["", f"sndw's merge against the server's own merge of the same rows: {floor['sndw_ratio']:.2f}x"
                              f"{f' ({own[0]:.2f}-{own[1]:.2f})' if floor['rounds'] > 1 else ''} (paired per round)."]
            if "psql_ratio" in floor:
                fed, mine = floor["psql_ratio_range"], floor["sndw_psql_ratio_range"]
                lines += ["", f"A merge whose rows come from a client at best: the same DELETE ... USING, then psql's binary "
                              f"\\copy of the same rows, one transaction: {floor['psql_merge_seconds']:.2f} s, "
                              f"{floor['psql_ratio']:.2f}x{f' ({fed[0]:.2f}-{fed[1]:.2f})' if floor['rounds'] > 1 else ''} "
                              f"the server's own merge; sndw's merge is {floor['sndw_psql_ratio']:.2f}x"
                              f"{f' ({mine[0]:.2f}-{mine[1]:.2f})' if floor['rounds'] > 1 else ''} this psql merge "
                              "(paired per round)."]
        lines.append("")
    for block in results.get("replace") or []:
        lines += [f"Replace: N rows into a table of N rows, wal_level = {block['wal_level']}", ""]
        lines += _speed_table(block, "psql binary", meta["rows"]) + [""]
    if results.get("memory"):
        lines += ["Memory growth of sndw (peak RSS of the process; etl.cli run: of its process tree)", "",
                  "| step | RSS at N MiB | rows at 4N | RSS at 4N MiB | 4N / N |", "|---|---:|---:|---:|---:|"]
        for row in results["memory"]:
            lines.append(f"| {row['step']} | {row['rss_mib_n']:.0f} | {_n(row['rows_4n'])} | {row['rss_mib_4n']:.0f} | "
                         f"{row['growth']:.2f} |")
        lines.append("")
    pagila = results.get("pagila")
    if pagila:
        if "skipped" in pagila:
            lines += [f"Pagila: {pagila['skipped']}", ""]
        else:
            lines += ["Pagila (small tables: fixed costs dominate)", "",
                      "| table | rows | extract s (sndw / psql CSV) | x psql CSV | load s (sndw / psql binary) | "
                      "x psql binary |", "|---|---:|---:|---:|---:|---:|"]
            for table, block in pagila.items():
                ext = {m["method"]: m for m in block["extract"]["methods"]}
                load = {m["method"]: m for m in block["load"]["methods"]}
                lines.append(f"| {table} | {_n(block['rows'])} | {ext['sndw']['seconds']:.2f} / "
                             f"{ext['psql_csv']['seconds']:.2f} | {ext['sndw']['ratio']:.2f} | "
                             f"{load['sndw']['seconds']:.2f} / {load['psql_binary']['seconds']:.2f} | "
                             f"{load['sndw']['ratio']:.2f} |")
            lines.append("")
    lines += cdc_lines(results.get("cdc"))
    if results.get("parse"):
        lines += ["Airflow: DagBag parse of a DAG folder (sndw_sources.py + N source configs of 3 tables)", "",
                  "| sources | DAGs | tasks | parse s | peak RSS MiB |", "|---:|---:|---:|---:|---:|"]
        for p in results["parse"]:
            lines.append(f"| {p['sources']} | {p['dags']} | {p['tasks']} | {p['seconds']:.2f} | {p['peak_rss_mib']:.0f} |")
        lines.append("")
    if results.get("dags_test"):
        lines += ["Airflow: `airflow dags test` of a sql source (whole CLI process; the no-op DAG has the same tasks "
                  "doing nothing)", "",
                  "| tables | tasks | sndw DAG s | no-op DAG s | sndw's own s (range) | peak RSS MiB |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for d in results["dags_test"]:
            lines.append(f"| {d['tables']} | {d['tasks']} | {d['seconds']:.1f} | {d['noop_seconds']:.1f} | "
                         f"{d['sndw_own_seconds']:.1f} ({d['sndw_own_range'][0]:.1f}-{d['sndw_own_range'][1]:.1f}) | "
                         f"{d['peak_rss_mib']:.0f} |")
        lines.append("")
    page = results.get("etl_page")
    if page:
        lines += ["The ETL page's answer: its queries and JSON (sndw.stats.overview), over a generated year of runs",
                  "", "| sources | tables | days | audit rows | seconds (median) | rounds |", "|---:|---:|---:|---:|---:|---|",
                  f"| {page['sources']} | {page['tables']} | {page['days']} | {_n(page['audit_rows'])} | "
                  f"{page['seconds']:.3f} | {', '.join(f'{r:.3f}' for r in page['rounds'])} |", ""]
    lines += _checks_table(results.get("checks"))
    lines += ["Targets", "", "| target | goal | measured | result |", "|---|---|---|---|"]
    for t in results.get("targets", []):
        lines.append(f"| {t['target']} | {t['goal']} | {t['text']} | {t['result']} |")
    return "\n".join(lines) + "\n"


def cdc_lines(block: dict[str, Any] | None) -> list[str]:
    """The CDC apply section: N changes against a merge of the same rows, and memory at 4N."""
    if not block:
        return []
    methods = {m["method"]: m for m in block["methods"]}
    lines = [f"CDC apply: {_n(block['changes'])} changes (3 updates : 1 delete) vs merge of the same rows", "",
             "| method | rows | seconds | rows/s | x merge time | peak RSS MiB | note |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for name in ("cdc_apply", "merge", "cdc_apply_4x"):
        m = methods.get(name)
        if m is None or "seconds" not in m:
            lines.append(f"| {name} | | | | | | {(m or {}).get('skipped', 'not run')} |")
            continue
        lines.append(f"| {name} | {_n(m['rows'])} | {m['seconds']:.2f} | {_n(m['rows_per_s'])} | {_ratio(m)} | "
                     f"{m['peak_rss_mib']:.0f} | {m['note']} |")
    if block.get("rss_growth_4x") is not None:
        lines.append(f"\nPeak RSS of the apply at 4N / at N: {block['rss_growth_4x']:.2f}")
    return [*lines, ""]
def _checks_table(block: dict[str, Any] | None) -> list[str]:
    """The checks' cost: the same load with and without them, paired per round."""
    if not block:
        return []
    lines = [f"Quality checks: the same load with and without {block['checks']}", "",
             "| load | rows | s | x no checks | peak RSS MiB |", "|---|---:|---:|---:|---:|"]
    for m in block["methods"]:
        if "ratio" not in m:
            lines.append(f"| {m['label']} | {_n(m['rows'])} | - | {m.get('skipped', '-')} | - |")
            continue
        lines.append(f"| {m['label']} | {_n(m['rows'])} | {m['seconds']:.2f} | {_ratio(m, 3)} | "
                     f"{m['peak_rss_mib']:.0f} |")
    return [*lines, "", f"The checks themselves took {block['checks_seconds']:.2f} s of the load (median).", ""]


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 7.5))
    meta = results["meta"]
    fig.suptitle(f"sndw benchmark: N = {meta['rows']:,} rows, median of {meta['rounds']} rounds, "
                 f"PostgreSQL {meta['server']}, {meta['cpus']} CPUs", fontsize=11)

    def bars(ax: Any, block: dict[str, Any] | None, title: str, target: float | None, log: bool = False) -> None:
        ax.set_title(title, fontsize=10)
        if not block:
            ax.set_axis_off()
            return
        measured = [m for m in block["methods"] if "ratio" in m]
        labels = [m["method"] + ("*" if m.get("note") and block["ratio"] == "speed" else "") for m in measured]
        values = [m["ratio"] for m in measured]
        colors = ["tab:blue" if m["method"] == "sndw" else "tab:gray" for m in measured]
        ax.barh(labels[::-1], values[::-1], color=colors[::-1])
        if log:
            ax.set_xscale("log")
        if target is not None:
            ax.axvline(target, color="tab:red", linestyle="--", linewidth=1)
        for y, v in enumerate(values[::-1]):
            ax.text(v, y, f" {v:.2f}" if v >= 0.1 else f" {v:.3f}", va="center", fontsize=8)
        ax.tick_params(labelsize=8)

    bars(axes[0][0], results.get("load"), "Load: x psql binary COPY (log; * = reduced N)", LOAD_TARGET, log=True)
    bars(axes[0][1], results.get("extract"), "Extract: x psql CSV COPY TO", EXTRACT_TARGET)
    bars(axes[0][2], results.get("write_modes"), "Write modes: time x append", PARTITION_TARGET)

    ax = axes[1][0]
    ax.set_title("Peak RSS, MiB (sndw at N and 4N)", fontsize=10)
    memory = results.get("memory") or []
    if memory:
        x = range(len(memory))
        ax.bar([i - 0.2 for i in x], [r["rss_mib_n"] for r in memory], 0.4, label="N")
        ax.bar([i + 0.2 for i in x], [r["rss_mib_4n"] for r in memory], 0.4, label="4N")
        ax.set_xticks(list(x), [r["step"] for r in memory])
        ax.legend(fontsize=8)
    ax = axes[1][1]
    ax.set_title("Peak RSS of each load / extract method, MiB", fontsize=10)
    rss = [(f"{sec[0]}:{m['method']}", m["peak_rss_mib"]) for sec in (("load", "L"), ("extract", "E"))
           for m in (results.get(sec[0]) or {}).get("methods", []) if "peak_rss_mib" in m]
    rss = [(label.replace("load:", "L ").replace("extract:", "E "), v) for label, v in rss]
    if rss:
        ax.barh([r[0] for r in rss][::-1], [r[1] for r in rss][::-1], color="tab:gray")
        ax.tick_params(labelsize=8)
    ax = axes[1][2]
    ax.set_title("Airflow DagBag parse, s", fontsize=10)
    parse = results.get("parse") or []
    if parse:
        ax.plot([p["sources"] for p in parse], [p["seconds"] for p in parse], marker="o")
        ax.axhline(PARSE_TARGET_SECONDS, color="tab:red", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("source configs", fontsize=8)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)

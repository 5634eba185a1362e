//! The one renderer: the scenarios' typed results into the markdown report (header, table,
//! tuning tables, goals, notes, scale), the JSON object written to `target/bench/compare.json`,
//! and the goal lines.

use std::fmt::Write as _;
use std::fs;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::buckets::{self, Buckets};
use crate::churn::Churn;
use crate::cold::{self, ColdMount, Runs};
use crate::fan::{self, FanIn};
use crate::hot::HotMount;
use crate::machine::Machine;
use crate::memory::{self, Memory};
use crate::rig;
use crate::scale::Scale;
use crate::seq::{self, DataPath, Seq};
use crate::small::{self, Phase, Small, SmallFiles};
use crate::stats::{mibs, ms, pct, MIB};
use crate::support;
use crate::tuning::{SeqTune, SmallTune};
use crate::{Res, Sizes};

#[derive(Clone)]
pub struct Goal {
    pub what: String,
    pub met: bool,
    pub detail: String,
}

impl Goal {
    /// The goal as a markdown list item.
    fn line(&self) -> String {
        let state = if self.met { "met" } else { "NOT met" };
        format!("- [{state}] {} — {}", self.what, self.detail)
    }
}

/// Everything a full run measures.
pub struct Results {
    pub hot: HotMount,
    pub cold: ColdMount,
    pub fan: FanIn,
    pub churn: Churn,
    pub memory: Memory,
    pub data: DataPath,
    pub small: SmallFiles,
    pub tune_data: Vec<SeqTune>,
    pub tune_small: Vec<SmallTune>,
    pub scale: Scale,
    pub buckets: Buckets,
}

/// The report so far: its markdown and its JSON object.
pub struct Report {
    pub markdown: String,
    json: Map<String, Value>,
}

/// The main table's rows (measure, bai-s3, rclone, reference, ratio, goal) and the goals.
#[derive(Default)]
struct Sheet {
    rows: Vec<[String; 6]>,
    goals: Vec<Goal>,
}

impl Sheet {
    fn row(&mut self, a: &str, b: String, c: String, d: String, e: String, f: String) {
        self.rows.push([a.to_string(), b, c, d, e, f]);
    }

    /// The main table, after a blank line.
    fn main_table(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\n| measure | bai-s3 | rclone | reference | ratio | goal |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|");
        for r in &self.rows {
            let _ = writeln!(out, "| {} |", r.join(" | "));
        }
    }

    fn goal(&mut self, what: impl Into<String>, met: bool, detail: String) {
        self.goals.push(Goal {
            what: what.into(),
            met,
            detail,
        });
    }
}

impl Report {
    /// The header, printed when the run starts and at the top of the report.
    pub fn header(sz: &Sizes, m: &Machine) -> Report {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# bai-s3 vs rclone serve docker{}",
            if sz.quick { " (QUICK sizes)" } else { "" }
        );
        let _ = writeln!(out);
        let _ = writeln!(out, "- date: {}", m.date);
        let _ = writeln!(
            out,
            "- machine: {} CPUs ({}), {} GiB RAM, kernel {}",
            m.nproc, m.cpu, m.mem_gib, m.kernel
        );
        for (k, v) in m.versions.as_object().expect("object") {
            let _ = writeln!(out, "- {k}: {}", v.as_str().unwrap_or(""));
        }
        let _ = writeln!(
            out,
            "- sizes: {} MiB file, {} small files of 4 KiB, {} hot Mounts, per-phase cap {} s",
            sz.file / MIB,
            sz.small,
            sz.hot,
            sz.cap.as_secs()
        );
        let mut j = Map::new();
        j.insert("date".into(), json!(m.date));
        j.insert("quick".into(), json!(sz.quick));
        j.insert(
            "machine".into(),
            json!({"nproc": m.nproc, "cpu": m.cpu, "mem_gib": m.mem_gib, "kernel": m.kernel}),
        );
        j.insert("versions".into(), m.versions.clone());
        j.insert(
            "sizes".into(),
            json!({"file_mib": sz.file / MIB, "small_files": sz.small, "hot_mounts": sz.hot, "cap_secs": sz.cap.as_secs()}),
        );
        Report {
            markdown: out,
            json: j,
        }
    }

    /// `BAI_S3_BENCH_ONLY=scale`: the header and the scale section.
    pub fn scale_only(mut self, sc: &Scale) -> Report {
        self.json.insert("scale".into(), scale_json(sc));
        self.markdown
            .push_str(&scale_markdown(sc, &scale_goals(sc)));
        self
    }

    /// `BAI_S3_BENCH_ONLY=small`: the header, the small files' rows and their tuning sweep.
    pub fn small_only(mut self, sz: &Sizes, sm: &SmallFiles, tune: &[SmallTune]) -> Report {
        let j = &mut self.json;
        j.insert(
            "small_files".into(),
            json!({"files": sm.files, "bytes_each": small::BYTES_EACH, "cap_secs": sm.cap.as_secs(),
                   "bai_s3": small_json(&sm.bai), "rclone": small_json(&sm.rclone)}),
        );
        let mut s = Sheet::default();
        small_rows(&mut s, sz, sm);
        let rows = tune_small(j, tune, sm);
        let out = &mut self.markdown;
        s.main_table(out);
        if !rows.is_empty() {
            out.push('\n');
            small_table(out, &rows);
        }
        for g in &s.goals {
            let _ = writeln!(out, "\n{}", g.line());
        }
        self
    }

    /// `BAI_S3_BENCH_ONLY=buckets`: the header and the buckets section.
    pub fn buckets_only(mut self, bk: &Buckets) -> Report {
        self.json.insert("buckets".into(), buckets_json(bk));
        self.markdown
            .push_str(&buckets_markdown(bk, &buckets_goals(bk)));
        self
    }

    /// A full run: the header, then every scenario.
    pub fn full(mut self, sz: &Sizes, r: &Results) -> Report {
        let j = &mut self.json;
        let mut s = Sheet::default();
        hot(&mut s, j, &r.hot);
        cold(&mut s, j, &r.cold);
        fan_in(&mut s, j, &r.fan, &r.cold);
        churn(&mut s, j, &r.churn);
        memory(&mut s, j, &r.memory);
        data_path(&mut s, j, sz, &r.data, &r.small);
        let tune_rows = tune_data(j, &r.tune_data, &r.data);
        let small_rows = tune_small(j, &r.tune_small, &r.small);
        let scale_goals = scale_goals(&r.scale);
        j.insert("scale".into(), scale_json(&r.scale));
        s.goals.extend(scale_goals.iter().cloned());
        let buckets_goals = buckets_goals(&r.buckets);
        j.insert("buckets".into(), buckets_json(&r.buckets));
        s.goals.extend(buckets_goals.iter().cloned());

        let out = &mut self.markdown;
        s.main_table(out);
        if !tune_rows.is_empty() {
            let _ = writeln!(out, "\nbai-s3 data path with other volume options (same file, bucket bench-tune; % of raw S3):\n");
            let _ = writeln!(out, "| options | seq write | seq read | goals |");
            let _ = writeln!(out, "|---|---|---|---|");
            for r in &tune_rows {
                let _ = writeln!(out, "{r}");
            }
        }
        if !small_rows.is_empty() {
            let _ = writeln!(
                out,
                "\nbai-s3 small files with other volume options ({} files; rclone total {:.1} s):\n",
                sz.small,
                r.small.rclone.total()
            );
            small_table(out, &small_rows);
        }
        let _ = writeln!(out, "\nGoals:\n");
        let mut gj = Vec::new();
        for g in &s.goals {
            let _ = writeln!(out, "{}", g.line());
            gj.push(json!({"goal": g.what, "met": g.met, "detail": g.detail}));
        }
        j.insert("goals".into(), Value::Array(gj));
        let notes = notes(sz, r);
        let _ = writeln!(out, "\nNotes:\n");
        for n in &notes {
            let _ = writeln!(out, "- {n}");
        }
        j.insert("notes".into(), json!(notes));
        out.push_str(&scale_markdown(&r.scale, &scale_goals));
        out.push_str(&buckets_markdown(&r.buckets, &buckets_goals));
        self
    }

    /// Write the JSON next to the build and print the markdown.
    pub fn write(self) -> Res<()> {
        let (out, mut j) = (self.markdown, self.json);
        j.insert("markdown".into(), json!(out));
        let dir = support::repo().join("target/bench");
        fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let file = dir.join("compare.json");
        fs::write(
            &file,
            serde_json::to_string_pretty(&Value::Object(j)).map_err(|e| e.to_string())?,
        )
        .map_err(|e| format!("write {}: {e}", file.display()))?;
        println!("{out}");
        println!("(JSON: {})", file.display());
        Ok(())
    }
}

fn hot(s: &mut Sheet, j: &mut Map<String, Value>, h: &HotMount) {
    let (b50, b99, r50, r99) = h.p50_p99();
    let (hb, hr) = (&h.bai, &h.rclone);
    j.insert(
        "hot_mount".into(),
        json!({"calls": h.calls, "bai_s3": {"p50_ms": b50, "p99_ms": b99, "max_ms": ms(hb[hb.len()-1])},
               "rclone": {"p50_ms": r50, "p99_ms": r99, "max_ms": ms(hr[hr.len()-1])}}),
    );
    s.row(
        "Hot Mount p50",
        format!("{b50:.3} ms"),
        format!("{r50:.3} ms"),
        "".into(),
        format!("{:.2}× rclone", b50 / r50),
        "".into(),
    );
    s.row(
        "Hot Mount p99",
        format!("{b99:.3} ms"),
        format!("{r99:.3} ms"),
        "".into(),
        format!("{:.2}× rclone", b99 / r99),
        "≤ 1 ms and ≤ rclone".into(),
    );
    s.goal(
        "Hot Mount p99 ≤ 1 ms and ≤ rclone's p99",
        b99 <= 1.0 && b99 <= r99,
        format!("bai-s3 {b99:.3} ms, rclone {r99:.3} ms"),
    );
}

fn cold(s: &mut Sheet, j: &mut Map<String, Value>, c: &ColdMount) {
    let (cb_m, cs_m, cr_m) = (c.bai.median, c.bare.median, c.rclone.median);
    let list = |v: &Runs| {
        v.all
            .iter()
            .map(|d| (ms(*d) * 100.0).round() / 100.0)
            .collect::<Vec<_>>()
    };
    j.insert(
        "cold_mount".into(),
        json!({"runs": cold::RUNS, "objects_in_bucket": rig::COLD_OBJECTS, "measure": "Mount request until the root is listed",
               "bai_s3": {"median_ms": ms(cb_m), "all_ms": list(&c.bai), "mount_reply_median_ms": ms(c.bai_reply.median)},
               "bare_s3fs": {"median_ms": ms(cs_m), "all_ms": list(&c.bare)},
               "rclone": {"median_ms": ms(cr_m), "all_ms": list(&c.rclone), "mount_reply_median_ms": ms(c.rclone_reply.median)}}),
    );
    let cold_ratio = cb_m.as_secs_f64() / cs_m.as_secs_f64();
    s.row(
        "Cold Mount (median of 7)",
        format!("{:.1} ms", ms(cb_m)),
        format!("{:.1} ms", ms(cr_m)),
        format!("bare s3fs {:.1} ms", ms(cs_m)),
        format!("{cold_ratio:.2}× bare s3fs"),
        "≤ 1.25× bare s3fs".into(),
    );
    s.goal(
        "Cold Mount ≤ 1.25 × bare s3fs",
        cold_ratio <= 1.25,
        format!(
            "bai-s3 {:.1} ms, bare s3fs {:.1} ms ({cold_ratio:.2}×), rclone {:.1} ms",
            ms(cb_m),
            ms(cs_m),
            ms(cr_m)
        ),
    );
}

fn fan_in(s: &mut Sheet, j: &mut Map<String, Value>, f: &FanIn, c: &ColdMount) {
    let (fb, fr) = (f.bai_wall, f.rclone_wall);
    let (fan_started, fan_live) = (f.s3fs_started, f.s3fs_live);
    let (cbr_m, cb_m) = (c.bai_reply.median, c.bai.median);
    j.insert(
        "fan_in".into(),
        json!({"mounts": fan::MOUNTS,
               "bai_s3": {"wall_ms": ms(fb), "s3fs_live_after": fan_live, "s3fs_started": fan_started, "connect_retries": f.bai_retries},
               "rclone": {"wall_ms": ms(fr), "connect_retries": f.rclone_retries}}),
    );
    // Against one cold Mount of the same bucket, to its reply (no listing in either).
    let fan_ratio = fb.as_secs_f64() / cbr_m.as_secs_f64();
    s.row(
        "Fan-in: 64 first Mounts, wall",
        format!("{:.1} ms", ms(fb)),
        format!("{:.1} ms", ms(fr)),
        format!(
            "1 cold Mount: reply {:.1} ms, listed {:.1} ms",
            ms(cbr_m),
            ms(cb_m)
        ),
        format!(
            "{fan_ratio:.2}× reply ({:.2}× listed)",
            fb.as_secs_f64() / cb_m.as_secs_f64()
        ),
        "≤ 1.5× one cold Mount".into(),
    );
    s.row(
        "Fan-in: s3fs processes",
        format!("{fan_started} started, {fan_live} live"),
        "(in-process)".into(),
        "".into(),
        "".into(),
        "exactly 1".into(),
    );
    s.goal(
        "Fan-in: exactly one s3fs, wall ≤ 1.5 × one cold Mount",
        fan_started == 1 && fan_live == 1 && fan_ratio <= 1.5,
        format!(
            "{fan_started} s3fs started, {fan_live} live; wall {:.1} ms = {fan_ratio:.2}× cold Mount",
            ms(fb)
        ),
    );
}

fn churn(s: &mut Sheet, j: &mut Map<String, Value>, c: &Churn) {
    let (ch0, ch5, cycles) = (c.delay0, c.delay5, c.cycles);
    let (rc_cell, rc_ratio0, rc_ratio5) = match &c.rclone {
        Ok(d) => (
            format!("{:.2} s", d.as_secs_f64()),
            format!("{:.2}× rclone", ch0.as_secs_f64() / d.as_secs_f64()),
            format!("{:.2}× rclone", ch5.as_secs_f64() / d.as_secs_f64()),
        ),
        Err(_) => ("hung (see notes)".to_string(), String::new(), String::new()),
    };
    j.insert(
        "churn".into(),
        json!({"cycles": cycles,
               "bai_s3_unmount_delay_0": {"wall_ms": ms(ch0), "s3fs_spawned": c.delay0_spawned},
               "bai_s3_unmount_delay_5": {"wall_ms": ms(ch5), "s3fs_spawned": c.delay5_spawned},
               "rclone": {"wall_ms": c.rclone.as_ref().ok().map(|d| ms(*d)), "error": c.rclone.as_ref().err()}}),
    );
    s.row(
        &format!("Churn {cycles} cycles, --unmount-delay 0"),
        format!(
            "{:.2} s, {} s3fs spawned",
            ch0.as_secs_f64(),
            c.delay0_spawned
        ),
        rc_cell.clone(),
        "".into(),
        rc_ratio0,
        "".into(),
    );
    s.row(
        &format!("Churn {cycles} cycles, --unmount-delay 5"),
        format!(
            "{:.2} s, {} s3fs spawned",
            ch5.as_secs_f64(),
            c.delay5_spawned
        ),
        rc_cell,
        "".into(),
        rc_ratio5,
        "".into(),
    );
}

fn memory(s: &mut Sheet, j: &mut Map<String, Value>, m: &Memory) {
    let (mem_b, mem_r, mem_n) = (m.bai_total, m.rclone, m.s3fs);
    let mem_ratio = m.ratio();
    j.insert(
        "memory".into(),
        json!({"volumes": memory::VOLUMES, "mounted": rig::MEM_MOUNTED,
               "bai_s3": {"rss_kib_total": mem_b, "rss_kib_daemon": m.bai_daemon, "s3fs_processes": mem_n, "rss_kib_daemon_idle": m.bai_idle},
               "rclone": {"rss_kib": mem_r, "rss_kib_idle": m.rclone_idle}}),
    );
    s.row(
        "Memory: RSS, 500 volumes / 20 prefixes mounted",
        format!(
            "{:.1} MiB ({:.1} daemon + {mem_n} s3fs)",
            mem_b as f64 / 1024.0,
            m.bai_daemon as f64 / 1024.0
        ),
        format!("{:.1} MiB", mem_r as f64 / 1024.0),
        "".into(),
        format!("{mem_ratio:.2}× rclone"),
        "≤ 0.5× rclone".into(),
    );
    s.goal(
        "Memory (20 prefixes of one bucket mounted) ≤ 0.5 × rclone",
        mem_ratio <= 0.5,
        format!(
            "bai-s3 {:.1} MiB with {mem_n} s3fs, rclone {:.1} MiB ({mem_ratio:.2}×)",
            mem_b as f64 / 1024.0,
            mem_r as f64 / 1024.0
        ),
    );
}

fn phase_json(p: &Phase) -> Value {
    json!({"secs": p.secs, "files_done": p.done, "files": p.total,
           "secs_for_all": p.full(), "capped_and_extrapolated": p.capped()})
}

/// A phase's table cell; ≈ when it was capped and extrapolated.
fn phase_cell(p: &Phase) -> String {
    if p.capped() {
        format!("{:.1} s (≈, {} of {} files)", p.full(), p.done, p.total)
    } else {
        format!("{:.1} s", p.secs)
    }
}

fn small_json(s: &Small) -> Value {
    json!({"create": phase_json(&s.create), "list": phase_json(&s.list), "read": phase_json(&s.read), "total_secs_for_all": s.total()})
}

fn data_path(s: &mut Sheet, j: &mut Map<String, Value>, sz: &Sizes, d: &DataPath, sm: &SmallFiles) {
    let (raw_wm, raw_rm) = (d.mibs(d.raw.write), d.mibs(d.raw.read));
    let (bw, br, rw, rr) = (
        d.mibs(d.bai.write),
        d.mibs(d.bai.read),
        d.mibs(d.rclone.write),
        d.mibs(d.rclone.read),
    );
    let seq_json = |s: &Seq| {
        json!({"write_secs": s.write.as_secs_f64(), "read_secs": s.read.as_secs_f64(),
        "write_mib_s": d.mibs(s.write), "read_mib_s": d.mibs(s.read)})
    };
    let (smb, smr) = (&sm.bai, &sm.rclone);
    j.insert(
        "data_path".into(),
        json!({"file_mib": d.file / MIB, "page_cache_dropped": d.caches_dropped,
               "raw_s3": {"write_secs": d.raw.write.as_secs_f64(), "read_secs": d.raw.read.as_secs_f64(), "write_mib_s": raw_wm, "read_mib_s": raw_rm,
                          "part_mib": seq::PART / MIB, "parallel": seq::PARALLEL},
               "bai_s3": seq_json(&d.bai), "rclone": seq_json(&d.rclone),
               "small_files": {"files": sm.files, "bytes_each": small::BYTES_EACH, "cap_secs": sm.cap.as_secs(),
                               "bai_s3": small_json(smb), "rclone": small_json(smr)}}),
    );
    s.row(
        &format!("Seq write {} MiB", sz.file / MIB),
        format!("{bw:.0} MiB/s"),
        format!("{rw:.0} MiB/s"),
        format!("raw S3 {raw_wm:.0} MiB/s"),
        format!("{:.0}% of raw", 100.0 * bw / raw_wm),
        "≥ 50% of raw".into(),
    );
    s.row(
        &format!("Seq read {} MiB (cold cache)", sz.file / MIB),
        format!("{br:.0} MiB/s"),
        format!("{rr:.0} MiB/s"),
        format!("raw S3 {raw_rm:.0} MiB/s"),
        format!("{:.0}% of raw", 100.0 * br / raw_rm),
        "≥ 70% of raw".into(),
    );
    s.goal(
        "Data path: sequential read ≥ 70% of raw S3",
        d.read_ok(),
        format!("{br:.0} of {raw_rm:.0} MiB/s ({:.0}%)", 100.0 * br / raw_rm),
    );
    s.goal(
        "Data path: sequential write ≥ 50% of raw S3",
        d.write_ok(),
        format!("{bw:.0} of {raw_wm:.0} MiB/s ({:.0}%)", 100.0 * bw / raw_wm),
    );
    small_rows(s, sz, sm);
}

/// The small files' rows and goal (in the data path's part of the table).
fn small_rows(s: &mut Sheet, sz: &Sizes, sm: &SmallFiles) {
    let (smb, smr) = (&sm.bai, &sm.rclone);
    for (label, b, r) in [
        ("create", smb.create, smr.create),
        ("list", smb.list, smr.list),
        ("read", smb.read, smr.read),
    ] {
        s.row(
            &format!("{} small files: {label}", sz.small),
            phase_cell(&b),
            phase_cell(&r),
            "".into(),
            format!("{:.2}× rclone", b.full() / r.full()),
            "".into(),
        );
    }
    let small_ratio = sm.ratio();
    s.row(
        &format!("{} small files: total", sz.small),
        format!("{:.1} s", smb.total()),
        format!("{:.1} s", smr.total()),
        "".into(),
        format!("{small_ratio:.2}× rclone"),
        "≤ 1× rclone".into(),
    );
    s.goal(
        format!("{} small files no slower than rclone defaults", sz.small),
        small_ratio <= 1.0,
        format!(
            "bai-s3 {:.1} s, rclone {:.1} s ({small_ratio:.2}×)",
            smb.total(),
            smr.total()
        ),
    );
}

/// The data-path sweep's JSON and its table's rows.
fn tune_data(j: &mut Map<String, Value>, sets: &[SeqTune], d: &DataPath) -> Vec<String> {
    let (raw_wm, raw_rm) = (d.mibs(d.raw.write), d.mibs(d.raw.read));
    let mut tune_rows = Vec::new();
    let mut tune_json = Vec::new();
    for t in sets {
        let set = &t.options;
        let (w, r) = (mibs(d.file, t.seq.write), mibs(d.file, t.seq.read));
        let (wp, rp) = (100.0 * w / raw_wm, 100.0 * r / raw_rm);
        let from_cache = if set.contains("cache=true") {
            " (read from s3fs's local disk cache, not S3)"
        } else {
            ""
        };
        tune_rows.push(format!(
            "| {set} | {w:.0} MiB/s ({wp:.0}%) | {r:.0} MiB/s ({rp:.0}%){from_cache} | {} |",
            if wp >= 50.0 && rp >= 70.0 {
                "both met"
            } else if wp >= 50.0 {
                "write met"
            } else if rp >= 70.0 {
                "read met"
            } else {
                "neither"
            }
        ));
        tune_json.push(json!({"options": set, "write_mib_s": w, "read_mib_s": r, "write_pct_raw": wp, "read_pct_raw": rp}));
    }
    j.insert("tuning_sweep".into(), Value::Array(tune_json));
    tune_rows
}

/// The small-files sweep's table.
fn small_table(out: &mut String, rows: &[String]) {
    let _ = writeln!(out, "| options | create | list | read | total |");
    let _ = writeln!(out, "|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(out, "{r}");
    }
}

/// The small-files sweep's JSON and its table's rows.
fn tune_small(j: &mut Map<String, Value>, sets: &[SmallTune], sm: &SmallFiles) -> Vec<String> {
    let smr = &sm.rclone;
    let mut small_rows = Vec::new();
    let mut small_tune_json = Vec::new();
    for t in sets {
        let (set, r) = (&t.options, &t.small);
        small_rows.push(format!(
            "| {set} | {} | {} | {} | {:.1} s ({:.2}× rclone) |",
            phase_cell(&r.create),
            phase_cell(&r.list),
            phase_cell(&r.read),
            r.total(),
            r.total() / smr.total()
        ));
        small_tune_json.push(json!({"options": set, "result": small_json(r), "ratio_to_rclone": r.total() / smr.total()}));
    }
    j.insert("small_files_tuning".into(), Value::Array(small_tune_json));
    small_rows
}

fn notes(sz: &Sizes, r: &Results) -> Vec<String> {
    let mut notes = vec![
        r.churn.rclone
            .as_ref()
            .err()
            .map(|e| format!("rclone churn: {e} (this rclone hung when a Mount followed an Unmount quickly, as 1.60 does; it was restarted for the later phases)"))
            .unwrap_or_default(),
        "Hot Mount: sequential calls on one kept-alive connection, as dockerd's client reuses its connection; IDs are new, the volume is already mounted.".to_string(),
        "Cold Mount: from the Mount request until the returned mount point lists; bare s3fs: from spawn until the mount point is a new mount and lists. s3fs of bai-s3 stopped between runs (--unmount-delay 0).".to_string(),
        "Fan-in: 64 threads, one connection each, released at once, on the bucket of the cold Mounts; compared with the reply time of one cold Mount there (neither lists the root). s3fs started = \"s3fs mount ready\" lines in bai-s3's log.".to_string(),
        "Memory: bai-s3 = VmRSS of the daemon + every s3fs whose command line names its mount root; rclone = VmRSS of its one process (mounts in-process). Fresh daemons.".to_string(),
        "Data path: plain std::fs, 1 MiB writes, fsync+close counted in the write; page cache dropped before reads. Raw S3: aws-sdk-s3, 16 MiB parts, 8 in flight, unsigned payload (no SHA-256 of the body).".to_string(),
    ];
    notes.retain(|n| !n.is_empty());
    if !r.data.caches_dropped {
        notes.push(
            "could NOT drop the page cache (/proc/sys/vm/drop_caches): reads may be warm".into(),
        );
    }
    let (smb, smr) = (&r.small.bai, &r.small.rclone);
    if [smb.create, smb.read, smr.create, smr.read]
        .iter()
        .any(Phase::capped)
    {
        notes.push(format!("small files: a phase that ran past {} s was stopped and its time extrapolated to all files (marked ≈)", sz.cap.as_secs()));
    }
    notes
}

fn scale_goals(sc: &Scale) -> Vec<Goal> {
    let (first, last) = (&sc.at[0], &sc.at[sc.at.len() - 1]);
    let hot_ratio = ms(last.hot_p99) / ms(first.hot_p99);
    let create_ratio = ms(last.create_p50) / ms(first.create_p50);
    vec![
        Goal {
            what: format!(
                "Scale: hot Mount p99 at {} volumes ≤ 1.5 × at {}",
                last.volumes, first.volumes
            ),
            met: hot_ratio <= 1.5,
            detail: format!(
                "{:.3} ms vs {:.3} ms ({hot_ratio:.2}×)",
                ms(last.hot_p99),
                ms(first.hot_p99)
            ),
        },
        Goal {
            what: format!(
                "Scale: Create p50 at {} volumes ≤ 2 × at {}",
                last.volumes, first.volumes
            ),
            met: create_ratio <= 2.0,
            detail: format!(
                "{:.2} ms vs {:.2} ms ({create_ratio:.2}×)",
                ms(last.create_p50),
                ms(first.create_p50)
            ),
        },
        Goal {
            what: format!(
                "Scale: List at {} volumes < 10 ms at the socket",
                last.volumes
            ),
            met: ms(last.list_p50) < 10.0,
            detail: format!("p50 {:.2} ms", ms(last.list_p50)),
        },
    ]
}

/// p50 and p99 in ms.
fn p50_p99(v: &[Duration]) -> (f64, f64) {
    (ms(pct(v, 0.5)), ms(pct(v, 0.99)))
}

fn scale_markdown(sc: &Scale, goals: &[Goal]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "\nScale (one bai-s3, volumes registered by Create over the socket, {} hot Mounts per size):\n", sc.hot);
    let _ = writeln!(md, "| volumes | Create p50 | hot Mount p50 / p99 | List p50 (p99), reply size | Get p50 | daemon RSS | store on disk |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for a in &sc.at {
        let _ = writeln!(
            md,
            "| {} | {:.2} ms | {:.3} / {:.3} ms | {:.2} ms (p99 {:.2}), {:.0} KiB | {:.3} ms | {:.1} MiB | {:.2} MiB |",
            a.volumes,
            ms(a.create_p50),
            ms(a.hot_p50),
            ms(a.hot_p99),
            ms(a.list_p50),
            ms(a.list_p99),
            a.list_bytes as f64 / 1024.0,
            ms(a.get_p50),
            a.rss_kib as f64 / 1024.0,
            a.store_bytes as f64 / MIB as f64
        );
    }
    let (n50, n99) = p50_p99(&sc.store.not_durable);
    let (d50, d99) = p50_p99(&sc.store.durable);
    let _ = writeln!(
        md,
        "\nOne store change at {} volumes (the library alone, same disk): not durable (holder changes) p50 {n50:.3} / p99 {n99:.3} ms; durable (Create, Remove; fsync) p50 {d50:.3} / p99 {d99:.3} ms.",
        sc.store.volumes
    );
    let _ = writeln!(md, "\nScale goals:\n");
    for g in goals {
        let _ = writeln!(md, "{}", g.line());
    }
    md
}

fn scale_json(sc: &Scale) -> Value {
    let js: Vec<Value> = sc
        .at
        .iter()
        .map(|a| {
            json!({"volumes": a.volumes, "create_p50_ms": ms(a.create_p50), "creates_timed": a.creates_timed,
            "hot_mount_p50_ms": ms(a.hot_p50), "hot_mount_p99_ms": ms(a.hot_p99),
            "list_p50_ms": ms(a.list_p50), "list_p99_ms": ms(a.list_p99), "list_bytes": a.list_bytes,
            "get_p50_ms": ms(a.get_p50), "rss_kib": a.rss_kib, "store_bytes": a.store_bytes})
        })
        .collect();
    let (n50, n99) = p50_p99(&sc.store.not_durable);
    let (d50, d99) = p50_p99(&sc.store.durable);
    json!({"sizes": js, "store_change": {
        "volumes": sc.store.volumes,
        "not_durable_p50_ms": n50, "not_durable_p99_ms": n99,
        "durable_p50_ms": d50, "durable_p99_ms": d99}})
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn buckets_goals(bk: &Buckets) -> Vec<Goal> {
    let (Some(first), Some(last)) = (bk.at.first(), bk.at.last()) else {
        return Vec::new();
    };
    let per = mib(last.bai.mem.pss) / last.n as f64;
    let (_, h_first) = buckets::p50_p99(&first.bai.hot);
    let (_, h_last) = buckets::p50_p99(&last.bai.hot);
    let (l_first, _) = buckets::p50_p99(&first.bai.list);
    let (l_last, _) = buckets::p50_p99(&last.bai.list);
    vec![
        Goal {
            what: format!("Buckets: PSS per bucket at {} ≤ 1.5 MiB", last.n),
            met: per <= 1.5,
            detail: format!(
                "{per:.2} MiB (rclone {:.2} MiB)",
                mib(last.rclone.mem.pss) / last.n as f64
            ),
        },
        Goal {
            what: format!(
                "Buckets: hot Mount p99 at {} mounted ≤ 1.5 × at {}",
                last.n, first.n
            ),
            met: h_last <= 1.5 * h_first,
            detail: format!(
                "{h_last:.3} ms vs {h_first:.3} ms ({:.2}×)",
                h_last / h_first
            ),
        },
        Goal {
            what: format!(
                "Buckets: List p50 at {} mounted ≤ 1.5 × at {}",
                last.n, first.n
            ),
            met: l_last <= 1.5 * l_first,
            detail: format!(
                "{l_last:.3} ms vs {l_first:.3} ms ({:.2}×)",
                l_last / l_first
            ),
        },
    ]
}

fn buckets_markdown(bk: &Buckets, goals: &[Goal]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "\nBuckets (N distinct buckets mounted at once, one volume and ID each; fresh daemons per N; bai-s3 / rclone, ratio bai-s3 ÷ rclone; PSS from smaps_rollup; {} cold Mounts of other buckets and {} hot Mounts with N mounted; idle CPU over {} s with --health-interval {}):\n", bk.cold_runs, bk.hot, buckets::IDLE_SECS, buckets::HEALTH);
    let _ = writeln!(md, "| N | PSS all | PSS per bucket | bai-s3 daemon PSS | mount all N | cold Mount p50 / p99 | hot Mount p50 / p99 | Get p50 | List p50 | idle CPU (bai-s3: daemon, with s3fs) | daemon fds / threads |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
    for a in &bk.at {
        let (b, r) = (&a.bai, &a.rclone);
        let n = a.n as f64;
        let (bc50, bc99) = buckets::p50_p99(&b.cold);
        let (rc50, rc99) = buckets::p50_p99(&r.cold);
        let (bh50, bh99) = buckets::p50_p99(&b.hot);
        let (rh50, rh99) = buckets::p50_p99(&r.hot);
        let (bg, _) = buckets::p50_p99(&b.get);
        let (rg, _) = buckets::p50_p99(&r.get);
        let (bl, _) = buckets::p50_p99(&b.list);
        let (rl, _) = buckets::p50_p99(&r.list);
        let _ = writeln!(
            md,
            "| {} | {:.0} / {:.0} MiB ({:.2}×) | {:.2} / {:.2} MiB | {:.1} MiB | {:.2} / {:.2} s ({:.1}×) | {:.1} / {:.1} vs {:.1} / {:.1} ms ({:.2}×) | {:.3} / {:.3} vs {:.3} / {:.3} ms | {:.3} vs {:.3} ms | {:.3} vs {:.3} ms | {:.2} %, {:.2} % vs {:.2} % | {} / {} vs {} / {} |",
            a.n,
            mib(b.mem.pss),
            mib(r.mem.pss),
            b.mem.pss as f64 / r.mem.pss.max(1) as f64,
            mib(b.mem.pss) / n,
            mib(r.mem.pss) / n,
            mib(b.daemon.pss),
            b.mount_all.as_secs_f64(),
            r.mount_all.as_secs_f64(),
            b.mount_all.as_secs_f64() / r.mount_all.as_secs_f64().max(1e-9),
            bc50, bc99, rc50, rc99, bc50 / rc50.max(1e-9),
            bh50, bh99, rh50, rh99,
            bg, rg, bl, rl,
            b.cpu_daemon, b.cpu_all, r.cpu_daemon,
            b.fds, b.threads, r.fds, r.threads
        );
    }
    for a in &bk.at {
        if let Some(note) = &a.rclone.note {
            let _ = writeln!(
                md,
                "\nAt {}: {note}; its later measures are missing (NaN).",
                a.n
            );
        }
    }
    let _ = writeln!(md, "\ns3fs's own memory by setting ({} bare s3fs 1.90 at once on as many buckets, mounted and listed; per s3fs; the daemon's default options plus the one setting):\n", buckets::KNOB_S3FS);
    let _ = writeln!(
        md,
        "| setting | PSS | private | private vs the daemon's options |"
    );
    let _ = writeln!(md, "|---|---|---|---|");
    let base = bk.knobs.first().map(|k| k.mem.private).unwrap_or(0).max(1);
    for k in &bk.knobs {
        match &k.failed {
            Some(e) => {
                // s3fs's last line only: the table keeps one line per row.
                let said = e.lines().last().unwrap_or("").replace('|', "/");
                let _ = writeln!(md, "| {} | s3fs did not start: {said} | | |", k.name);
            }
            None => {
                let _ = writeln!(
                    md,
                    "| {} | {:.2} MiB | {:.2} MiB | {:.2}× |",
                    k.name,
                    mib(k.mem.pss),
                    mib(k.mem.private),
                    k.mem.private as f64 / base as f64
                );
            }
        }
    }
    let _ = writeln!(md, "\nBuckets goals:\n");
    for g in goals {
        let _ = writeln!(md, "{}", g.line());
    }
    md
}

fn buckets_json(bk: &Buckets) -> Value {
    let side = |s: &buckets::Side| {
        let (c50, c99) = buckets::p50_p99(&s.cold);
        let (h50, h99) = buckets::p50_p99(&s.hot);
        json!({"pss_kib": s.mem.pss, "private_kib": s.mem.private, "daemon_pss_kib": s.daemon.pss,
            "processes": s.processes, "mount_all_s": s.mount_all.as_secs_f64(),
            "cold_mount_p50_ms": c50, "cold_mount_p99_ms": c99,
            "hot_mount_p50_ms": h50, "hot_mount_p99_ms": h99,
            "get_p50_ms": buckets::p50_p99(&s.get).0, "list_p50_ms": buckets::p50_p99(&s.list).0,
            "idle_cpu_daemon_pct": s.cpu_daemon, "idle_cpu_all_pct": s.cpu_all,
            "fds": s.fds, "threads": s.threads, "note": s.note})
    };
    let at: Vec<Value> = bk
        .at
        .iter()
        .map(|a| json!({"buckets": a.n, "bai": side(&a.bai), "rclone": side(&a.rclone)}))
        .collect();
    let knobs: Vec<Value> = bk
        .knobs
        .iter()
        .map(|k| json!({"setting": k.name, "pss_kib": k.mem.pss, "private_kib": k.mem.private, "refused": k.failed}))
        .collect();
    json!({"at": at, "knobs": knobs, "cold_runs": bk.cold_runs, "hot_mounts": bk.hot, "knob_s3fs": buckets::KNOB_S3FS})
}

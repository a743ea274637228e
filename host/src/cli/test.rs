//! `offerd test`: golden cases on the production engine and limits, for a
//! rule author's terminal and CI: per-case time beside the call limit, a
//! JUnit report, what of the catalog no case reaches, and a watch mode that
//! rebuilds and re-runs on every change.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use super::EngineArgs;
use crate::catalog::{Catalogs, RegionCatalog};
use crate::engine::{RegionRules, RuleModule};
use crate::golden::{self, Case, Verdict};

#[derive(Args, Clone)]
pub(super) struct TestArgs {
    /// The module under test.
    #[arg(long, value_name = "FILE", required_unless_present = "manifest_path")]
    module: Option<PathBuf>,
    /// Build the rule crate of this manifest first (as `offerd build`) and test what it makes.
    #[arg(long, value_name = "FILE", conflicts_with = "module")]
    manifest_path: Option<PathBuf>,
    /// With --manifest-path: build with the release profile.
    #[arg(long, requires = "manifest_path")]
    release: bool,
    /// The region's catalog; `regions.toml` must sit beside it.
    #[arg(long, value_name = "FILE", required_unless_present = "catalogs", conflicts_with = "catalogs")]
    catalog: Option<PathBuf>,
    /// A catalog directory: each case file runs against the region its name
    /// gives (`cases/europe.json` against `europe.toml`).
    #[arg(long, value_name = "DIR")]
    catalogs: Option<PathBuf>,
    /// Golden-case files (JSON).
    #[arg(required = true, value_name = "CASE")]
    cases: Vec<PathBuf>,
    /// Also write the verdicts as JUnit XML.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// List the plans, promos and metros of each catalog that no case's
    /// expected offers reach.
    #[arg(long)]
    coverage: bool,
    /// Rewrite the expectation of every failing case to what the module
    /// answers (after a deliberate change of the rules); cases the module
    /// fails on (trap, timeout) stay as they are.
    #[arg(long)]
    update: bool,
    /// Re-run (rebuild first, with --manifest-path) whenever the module,
    /// crate, catalogs or cases change; until interrupted.
    #[arg(long)]
    watch: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

pub(super) fn run(args: &TestArgs) -> anyhow::Result<ExitCode> {
    // A file named twice (`cases/*.json cases/europe.json`) runs once.
    let mut unique = Vec::with_capacity(args.cases.len());
    for file in &args.cases {
        if !unique.contains(file) {
            unique.push(file.clone());
        }
    }
    let args = &TestArgs { cases: unique, ..args.clone() };
    if !args.watch {
        return Ok(if run_once(args)? { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    // Directories are watched, not files: a file replaced by a rename
    // (cargo, `offerd build -o`, `--update`, most editors) ends a watch on
    // the file itself. Events are kept for the watched paths only.
    let watched = watched(args);
    let interesting: Vec<PathBuf> = watched.iter().filter_map(|p| std::fs::canonicalize(p).ok()).collect();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let relevant = event.kind.is_modify() || event.kind.is_create() || event.kind.is_remove();
        if relevant && event.paths.iter().any(|p| interesting.iter().any(|w| p.starts_with(w))) {
            let _ = tx.send(());
        }
    })
    .context("starting the file watcher")?;
    let mut dirs: Vec<PathBuf> = Vec::new();
    for path in &watched {
        let path = std::fs::canonicalize(path).with_context(|| format!("finding {}", path.display()))?;
        let dir = if path.is_dir() { path } else { path.parent().unwrap_or(Path::new("/")).to_owned() };
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    for dir in &dirs {
        use notify::Watcher as _;
        watcher.watch(dir, notify::RecursiveMode::Recursive).with_context(|| format!("watching {}", dir.display()))?;
    }
    loop {
        if let Err(e) = run_once(args) {
            println!("error: {e:#}");
        }
        println!("-- watching for changes (Ctrl-C to stop)");
        io::stdout().flush()?;
        rx.recv().context("the file watcher stopped")?;
        // Editors and cargo write in bursts: settle, then run once.
        std::thread::sleep(Duration::from_millis(200));
        while rx.try_recv().is_ok() {}
    }
}

/// What `--watch` watches: the module (or the crate's sources), the catalogs, the cases.
fn watched(args: &TestArgs) -> Vec<PathBuf> {
    let mut paths = args.cases.clone();
    match (&args.module, &args.manifest_path) {
        (Some(module), _) => paths.push(module.clone()),
        (None, Some(manifest)) => {
            let dir = manifest.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            paths.extend([manifest.clone(), dir.join("src"), dir.join("wit")]);
        }
        (None, None) => {}
    }
    paths.extend(args.catalog.iter().cloned());
    paths.extend(args.catalogs.iter().cloned());
    paths.retain(|p| p.exists());
    paths
}

/// One run of every case; whether all passed.
fn run_once(args: &TestArgs) -> anyhow::Result<bool> {
    let engine = args.engine.engine()?;
    let (label, bytes) = match (&args.module, &args.manifest_path) {
        (Some(module), _) => {
            let limit = engine.limits().max_module_bytes as u64;
            let bytes = crate::config_file::read_limited(module, limit)
                .with_context(|| format!("reading {}", module.display()))?;
            (module.display().to_string(), bytes)
        }
        (None, Some(manifest)) => {
            let built = super::build::build(manifest, args.release)?;
            (format!("{} (built from {})", built.package, manifest.display()), built.component)
        }
        (None, None) => bail!("give --module or --manifest-path"),
    };
    let module = Arc::new(RuleModule::load(&engine, &bytes).with_context(|| format!("loading {label}"))?);
    let limit = engine.limits().call_timeout;

    let mut out = io::stdout().lock();
    let (mut all, mut all_cases) = (Vec::new(), Vec::new());
    for (catalog, files) in catalogs_of(args)? {
        let cases = golden::load(&files)?;
        let catalog = Arc::new(catalog);
        let rules = RegionRules::new(module.clone(), catalog.clone())
            .with_context(|| format!("starting {label} with {}", catalog.file.display()))?;
        let verdicts = golden::run(&rules, &cases);
        for v in &verdicts {
            let time = format!("{:.2} ms of {} ms", v.elapsed.as_secs_f64() * 1e3, limit.as_millis());
            match &v.failure {
                None => writeln!(out, "ok   {}  ({time})", golden::label(&v.file, &v.name))?,
                Some(why) => writeln!(out, "FAIL {}  ({time})\n{why}", golden::label(&v.file, &v.name))?,
            }
        }
        if args.coverage {
            write_coverage(&mut out, &catalog, &cases)?;
        }
        all.extend(verdicts);
        all_cases.extend(cases);
    }
    let failed = all.iter().filter(|v| v.failure.is_some()).count();
    writeln!(out, "{} passed, {failed} failed", all.len() - failed)?;
    if let Some(path) = &args.junit {
        crate::atomic_file::write(path, junit(&all).as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.update {
        let updated = update(&mut all_cases, &all)?;
        writeln!(out, "updated {updated} expectations to what the module answers")?;
        // What could not be updated (a trap, a timeout) still fails.
        return Ok(all.iter().all(|v| v.failure.is_none() || v.answer.is_some()));
    }
    Ok(failed == 0)
}

/// Rewrites every case file holding a failing case the module answered,
/// with that answer as the expectation; how many cases changed.
fn update(cases: &mut [(PathBuf, Case)], verdicts: &[Verdict]) -> anyhow::Result<usize> {
    let mut changed_files: Vec<PathBuf> = Vec::new();
    let mut changed = 0;
    for ((file, case), verdict) in cases.iter_mut().zip(verdicts) {
        if let (Some(_), Some(answer)) = (&verdict.failure, &verdict.answer) {
            case.expect = answer.clone();
            changed += 1;
            if !changed_files.contains(file) {
                changed_files.push(file.clone());
            }
        }
    }
    for file in changed_files {
        let of_file: Vec<&Case> = cases.iter().filter(|(f, _)| *f == file).map(|(_, c)| c).collect();
        let text = serde_json::to_string_pretty(&of_file).expect("cases serialise") + "\n";
        crate::atomic_file::write(&file, text.as_bytes()).with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(changed)
}

/// Each catalog with the case files that run against it.
fn catalogs_of(args: &TestArgs) -> anyhow::Result<Vec<(RegionCatalog, Vec<PathBuf>)>> {
    if let Some(file) = &args.catalog {
        return Ok(vec![(Catalogs::load_region_file(file)?, args.cases.clone())]);
    }
    let dir = args.catalogs.as_ref().expect("clap requires --catalog or --catalogs");
    let catalogs = Catalogs::load(dir)?;
    let mut by_region: Vec<(RegionCatalog, Vec<PathBuf>)> = Vec::new();
    for file in &args.cases {
        let region = file.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        let Some(catalog) = catalogs.region(region) else {
            bail!(
                "{}: with --catalogs, a case file is named after its region, and {} defines no region {region:?}",
                file.display(),
                dir.join("regions.toml").display()
            );
        };
        match by_region.iter_mut().find(|(c, _)| c.region == region) {
            Some((_, files)) => files.push(file.clone()),
            None => by_region.push((catalog.clone(), vec![file.clone()])),
        }
    }
    Ok(by_region)
}

/// Most unreached metros named; the rest are counted.
const METROS_SHOWN: usize = 10;

fn write_coverage(out: &mut impl Write, catalog: &RegionCatalog, cases: &[(PathBuf, Case)]) -> io::Result<()> {
    let c = golden::coverage(catalog, cases);
    let region = &catalog.region;
    let list = |items: &[&str]| if items.is_empty() { "none".to_owned() } else { items.join(", ") };
    writeln!(
        out,
        "coverage {region}: plans no case reaches ({} of {}): {}",
        c.plans.len(),
        catalog.plans.len(),
        list(&c.plans)
    )?;
    writeln!(
        out,
        "coverage {region}: promos no case reaches ({} of {}): {}",
        c.promos.len(),
        catalog.promos.len(),
        list(&c.promos)
    )?;
    let shown = &c.metros[..c.metros.len().min(METROS_SHOWN)];
    let more = c.metros.len() - shown.len();
    let more = if more > 0 { format!(" and {more} more") } else { String::new() };
    writeln!(
        out,
        "coverage {region}: metros no case reaches ({} of {}): {}{more}",
        c.metros.len(),
        c.metros_total,
        list(shown)
    )
}

/// JUnit XML as Jenkins, GitLab and GitHub reporters read it: one suite per
/// case file, the failure's rank-by-rank diff as message and body.
fn junit(verdicts: &[Verdict]) -> String {
    let mut files: Vec<&Path> = Vec::new();
    for v in verdicts {
        if !files.contains(&v.file.as_path()) {
            files.push(&v.file);
        }
    }
    let failures = verdicts.iter().filter(|v| v.failure.is_some()).count();
    let total: f64 = verdicts.iter().map(|v| v.elapsed.as_secs_f64()).sum();
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        xml,
        r#"<testsuites name="offerd test" tests="{}" failures="{failures}" errors="0" time="{total:.6}">"#,
        verdicts.len()
    );
    for file in files {
        let suite: Vec<&Verdict> = verdicts.iter().filter(|v| v.file == file).collect();
        let name = escape(&file.display().to_string());
        let failed = suite.iter().filter(|v| v.failure.is_some()).count();
        let time: f64 = suite.iter().map(|v| v.elapsed.as_secs_f64()).sum();
        let _ = writeln!(
            xml,
            r#"  <testsuite name="{name}" tests="{}" failures="{failed}" errors="0" skipped="0" time="{time:.6}">"#,
            suite.len()
        );
        for v in suite {
            let case = escape(&v.name);
            let time = v.elapsed.as_secs_f64();
            match &v.failure {
                None => {
                    let _ = writeln!(xml, r#"    <testcase classname="{name}" name="{case}" time="{time:.6}"/>"#);
                }
                Some(why) => {
                    let why = escape(why);
                    let _ = writeln!(
                        xml,
                        "    <testcase classname=\"{name}\" name=\"{case}\" time=\"{time:.6}\">\n      \
                         <failure message=\"{}\" type=\"golden-case\">{why}</failure>\n    </testcase>",
                        why.replace('\n', "&#10;")
                    );
                }
            }
        }
        xml.push_str("  </testsuite>\n");
    }
    xml.push_str("</testsuites>\n");
    xml
}

/// Text as XML character data or an attribute value; characters XML 1.0
/// cannot carry at all become U+FFFD.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junit_groups_by_file_and_escapes_what_xml_cannot_carry() {
        let verdict = |file: &str, name: &str, failure: Option<&str>| Verdict {
            file: file.into(),
            name: name.into(),
            failure: failure.map(str::to_owned),
            elapsed: Duration::from_micros(250),
            answer: None,
        };
        let xml = junit(&[
            verdict("a.json", "ok <1>", None),
            verdict("a.json", "bad & \"quoted\"", Some("  rank  expected\n     1  x  ≠ y\u{1}")),
            verdict("b.json", "ok", None),
        ]);
        assert!(xml.contains(r#"<testsuites name="offerd test" tests="3" failures="1""#), "{xml}");
        assert_eq!(xml.matches("<testsuite ").count(), 2, "{xml}");
        assert!(xml.contains(r#"name="ok &lt;1&gt;""#), "{xml}");
        assert!(xml.contains(r#"name="bad &amp; &quot;quoted&quot;""#), "{xml}");
        assert!(xml.contains("message=\"  rank  expected&#10;     1  x  ≠ y\u{fffd}\""), "{xml}");
        assert!(xml.contains(">  rank  expected\n     1  x  ≠ y\u{fffd}</failure>"), "{xml}");
        assert!(!xml.contains('\u{1}'));
    }
}

//! The command line: `ttpflow run`, `ttpflow rules check` and `ttpflow export navigator`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use tracing::info;

use crate::navigator::{self, Scope};
use crate::rules::{self, LoadOptions, LoadedPack, Problem};
use crate::runtime::{self, RunOptions};

#[derive(Debug, Parser)]
#[command(name = "ttpflow", version, about = "Honeypot fleet events to MITRE ATT&CK technique tags")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the job (embedded: JSONL inputs to an output directory).
    Run(RunArgs),
    /// Work with rule packs.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Export what the job stored in PostgreSQL.
    Export {
        #[command(subcommand)]
        command: ExportCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ExportCommand {
    /// ATT&CK Navigator layer (format 4.5) of one scope's techniques, from `ttp_rollup`.
    Navigator(NavigatorArgs),
}

#[derive(Debug, Args)]
pub struct NavigatorArgs {
    /// `campaign:<id>`, `identity:<id>`, `attacker:<id>`, `session:<id>` or `fleet`.
    #[arg(long)]
    pub scope: Scope,
    /// PostgreSQL connection string (URL or key=value pairs) of the job's database.
    #[arg(long, env = "TTPFLOW_POSTGRES", hide_env_values = true)]
    pub postgres: String,
    /// Write the layer to this file instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// ATT&CK release of the techniques (its major version is the layer's `versions.attack`).
    #[arg(long, default_value = ttpflow_dataflows::rules::DEFAULT_ATTACK_RELEASE)]
    pub attack_release: String,
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Load a pack, report every problem per file and run each rule's examples.
    Check {
        /// The rules directory.
        dir: PathBuf,
        /// Directory of intel provider mapping tables; default: the project's, built in.
        #[arg(long)]
        intel_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Rules directory (DECNET's YAML format).
    #[arg(long, default_value = "rules")]
    pub rules: PathBuf,
    /// JSONL input, repeatable, read in the order given (`-` = standard input).
    #[arg(long = "input", default_value = "examples/fleet.jsonl")]
    pub inputs: Vec<PathBuf>,
    /// DECNET's artifacts directory: an email without `body_text` gets the body of its
    /// stored message, `DIR/<decky_id>/smtp/<stored_as>`.
    #[arg(long, env = "TTPFLOW_ARTIFACTS_DIR")]
    pub artifacts_dir: Option<PathBuf>,
    /// Output directory for tags.jsonl, rollups.jsonl and dead_letters.jsonl.
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Timely worker threads.
    #[arg(short = 'w', long, default_value_t = 1)]
    pub workers: usize,
    /// Records per epoch.
    #[arg(long, default_value_t = 1024)]
    pub epoch_records: u64,
    /// Rule state file: rule id → {state, confidence_max, expires_at, reason, set_by}.
    #[arg(long)]
    pub rule_state: Option<PathBuf>,
    /// ATT&CK release stamped on tags.
    #[arg(long, default_value = ttpflow_dataflows::rules::DEFAULT_ATTACK_RELEASE)]
    pub attack_release: String,
    /// Directory of intel provider mapping tables (`<provider>.yaml`); default: the
    /// project's tables, built in.
    #[arg(long)]
    pub intel_dir: Option<PathBuf>,
    /// PostgreSQL connection string (URL or key=value pairs): commit the tags and the
    /// progress of the inputs per epoch, resuming after what is stored.
    #[arg(long, env = "TTPFLOW_POSTGRES", hide_env_values = true)]
    pub postgres: Option<String>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs a parsed command line.
pub fn main(cli: Cli) -> Result<ExitCode, BoxError> {
    match cli.command {
        Command::Run(args) => run(args),
        Command::Rules { command: RulesCommand::Check { dir, intel_dir } } => check(&dir, intel_dir.as_deref()),
        Command::Export { command: ExportCommand::Navigator(args) } => export_navigator(args),
    }
}

fn export_navigator(args: NavigatorArgs) -> Result<ExitCode, BoxError> {
    let layer = navigator::export(&args.postgres, &args.scope, &args.attack_release)?;
    let mut text = serde_json::to_string_pretty(&layer)?;
    text.push('\n');
    match &args.out {
        Some(path) => std::fs::write(path, text)
            .map_err(|e| format!("failed to write the layer to \"{}\": {e}", path.display()))?,
        None => std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes())?,
    }
    let techniques = layer["techniques"].as_array().map_or(0, Vec::len);
    info!(scope = %args.scope, techniques, "exported navigator layer");
    Ok(ExitCode::SUCCESS)
}

fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

fn run(args: RunArgs) -> Result<ExitCode, BoxError> {
    let mut options = LoadOptions { attack_release: args.attack_release.clone(), ..LoadOptions::default() };
    if let Some(file) = &args.rule_state {
        options.states = rules::load_states(file, now_micros())?;
    }
    if let Some(dir) = &args.intel_dir {
        options.intel = Arc::new(crate::intel_tables::load(dir)?);
    }
    let loaded = rules::load(&args.rules, &options)?;
    info!(rules = loaded.pack.rules().len(), dir = %args.rules.display(), "loaded rule pack");
    let with_artifacts = args.artifacts_dir.is_some();
    let summary = runtime::run_files(RunOptions {
        inputs: args.inputs,
        out: args.out,
        workers: args.workers,
        epoch_records: args.epoch_records,
        pack: Arc::new(loaded.pack),
        artifacts_dir: args.artifacts_dir,
        postgres: args.postgres,
    })?;
    let artifacts =
        if with_artifacts { format!(" artifacts_missing={}", summary.artifacts_missing) } else { String::new() };
    let postgres = summary.postgres.map_or(String::new(), |pg| {
        format!(
            " epochs_committed={} epochs_skipped={} rows_inserted={} rollups_upserted={} rollups_deleted={} \
             sink_rows_per_s={:.0}",
            pg.epochs_committed,
            pg.epochs_skipped,
            pg.rows_inserted,
            pg.rollups_upserted,
            pg.rollups_deleted,
            pg.rows_per_second()
        )
    });
    println!(
        "records={} tags={} rollups={} dead_letters={}{artifacts}{postgres} elapsed_s={:.3} records_per_s={:.0}",
        summary.records,
        summary.tags,
        summary.rollups,
        summary.dead_letters,
        summary.elapsed.as_secs_f64(),
        summary.records_per_second()
    );
    Ok(ExitCode::SUCCESS)
}

/// The outcome of running a pack's examples.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub passed: usize,
    /// The examples that did not behave, one problem each (file and rule named).
    pub failures: Vec<Problem>,
    /// Examples of rules whose `lifter:*` kind this build loads but does not evaluate.
    pub not_evaluated: usize,
}

/// Runs every rule's embedded examples, regex and structured rules alike, each example
/// as a payload of the rule's first `applies_to` kind.
pub fn run_examples(loaded: &LoadedPack) -> CheckReport {
    let mut report = CheckReport::default();
    for (idx, rule) in loaded.pack.rules().iter().enumerate() {
        let examples = &loaded.examples[idx];
        if !rule.is_evaluated() {
            report.not_evaluated += examples.must_match.len() + examples.must_not_match.len();
            continue;
        }
        let kind = rule.applies_to.first().map(String::as_str).unwrap_or_default();
        let cases =
            examples.must_match.iter().map(|p| (p, true)).chain(examples.must_not_match.iter().map(|p| (p, false)));
        for (payload, want) in cases {
            if loaded.pack.rule_matches(idx, kind, payload) == want {
                report.passed += 1;
            } else {
                let verb = if want { "should match but does not" } else { "should not match but does" };
                report.failures.push(Problem {
                    file: loaded.files[idx].clone(),
                    rule: Some(rule.rule_id.clone()),
                    field: None,
                    message: format!("example {verb}: {}", payload.to_json_string()),
                });
            }
        }
    }
    report
}

/// Prints every load problem and every failing example, file by file (in name order),
/// then the counts; the examples of the valid rules run even when others do not load.
fn check(dir: &Path, intel_dir: Option<&Path>) -> Result<ExitCode, BoxError> {
    let mut options = LoadOptions::default();
    if let Some(intel_dir) = intel_dir {
        options.intel = Arc::new(crate::intel_tables::load(intel_dir)?);
    }
    let (loaded, problems) = rules::load_valid(dir, &options)?;
    let report = run_examples(&loaded);
    let mut lines: Vec<(&str, String)> = problems.iter().map(|p| (p.file.as_str(), format!("error: {p}"))).collect();
    lines.extend(report.failures.iter().map(|f| (f.file.as_str(), format!("fail: {f}"))));
    // Stable: within a file, load problems first, then examples in rule order.
    lines.sort_by(|a, b| a.0.cmp(b.0));
    for (_, line) in &lines {
        println!("{line}");
    }
    println!(
        "{} {}; {} examples passed, {} failed, {} not evaluated (lifter kinds this build does not evaluate)",
        loaded.pack.rules().len(),
        if problems.is_empty() { "rules loaded" } else { "valid rules" },
        report.passed,
        report.failures.len(),
        report.not_evaluated
    );
    if !problems.is_empty() {
        println!("{} problem(s); the pack does not load", problems.len());
    }
    Ok(if problems.is_empty() && report.failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

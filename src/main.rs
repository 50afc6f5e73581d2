//! The `tailor` command line. The work is in the library; this only parses arguments, sets up
//! logging and signals, and reports errors.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;

use tailor::config::Config;
use tailor::segments::SegmentSet;

#[global_allocator]
static ALLOCATOR: tailor::allocator::Mimalloc = tailor::allocator::Mimalloc;

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_e` (libmimalloc-sys names no constant).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// mimalloc returns memory freed for 1 s to the OS; a batch frees and allocates again about as
/// often, and faulting the pages back in (the kernel zeroing them) took 8 % of the worker thread
/// on the wide bench. Freed memory is kept for 10 s instead, unless `MIMALLOC_PURGE_DELAY` says
/// otherwise.
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets an option of the allocator in use; takes effect at its next purge.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10_000) };
    }
}

#[derive(Parser)]
#[command(
    name = "tailor",
    version,
    about = "Shopper profiles and audiences from commerce events on Kafka"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker.
    Run {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a segments file (and, with --config, a whole configuration) without running.
    Check {
        #[arg(long, value_name = "FILE")]
        segments: Option<PathBuf>,
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Produce a real data set to the input topics as the platform's events.
    Replay {
        #[arg(long, value_enum)]
        dataset: Dataset,
        /// CSV file (.csv or .csv.gz).
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        /// Worker config for topic names and Kafka settings.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Kafka bootstrap servers (overrides the config's).
        #[arg(long)]
        brokers: Option<String>,
        /// Stop after this many events.
        #[arg(long)]
        limit: Option<u64>,
        /// Events per second (default: as fast as the broker takes them).
        #[arg(long)]
        rate: Option<u64>,
        /// Sort a file that is not in event-time order before producing it (holds every event
        /// in memory). Without it such a file is refused: its events would arrive late.
        #[arg(long)]
        sort: bool,
        /// uci-online-retail only: give this percent of the customers (the same ones every run)
        /// a synthetic profile record with an e-mail address and marketing e-mail consent before
        /// their first invoice, so journeys that need consent can trigger (the data has none).
        #[arg(long, value_name = "PERCENT", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
        opted_in: u8,
        /// uci-online-retail only: before each order, an anonymous browser views and adds its
        /// lines to the cart, then signs in as the customer (all three event families, with
        /// identity stitching). Needs --sort.
        #[arg(long)]
        browsing: bool,
    },
    /// Create the configured input and output topics where missing.
    Topics {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        #[arg(long, default_value_t = 1)]
        replication: i32,
    },
    /// Print the audience changes on the output topic, oldest first.
    Changes {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Stop after this many changes.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Stop when nothing new arrives for this long.
        #[arg(long, default_value = "3s")]
        idle: humantime::Duration,
    },
    /// List every schema Tailor reads and writes, with its spec fingerprint (Parsing Canonical
    /// Form, CRC-64-AVRO). With a config naming a schema registry: check the input schemas'
    /// compatibility with the registry's subjects; with --register, also register the output
    /// schemas under `<topic>-value` (the worker does it at start with output.framing = confluent).
    Schemas {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Describe this schema file only (canonical form and fingerprints).
        #[arg(long, value_name = "FILE", conflicts_with = "config")]
        file: Option<PathBuf>,
        /// JSON output: name, file, canonical, fingerprint, fingerprint_legacy.
        #[arg(long)]
        json: bool,
        /// Register the output schemas in the configured registry.
        #[arg(long, requires = "config")]
        register: bool,
    },
    /// Evaluate new or changed segment definitions against the stored profiles (read-only, safe
    /// while the worker runs): members, a sample, the overlap with the segments in force, and
    /// who would enter or exit.
    Preview {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The definitions to preview.
        #[arg(long, value_name = "FILE")]
        segments: PathBuf,
        /// Keys to show per list.
        #[arg(long, default_value_t = 5, conflicts_with = "history")]
        sample: usize,
        /// Show profile keys that are e-mail addresses in full (masked by default: a report
        /// passed around should name no one).
        #[arg(long, conflicts_with = "history")]
        show_emails: bool,
        /// Only these partitions (comma-separated; default: all the state directory holds).
        #[arg(long, value_delimiter = ',', conflicts_with = "history")]
        partitions: Option<Vec<i32>>,
        /// Instead of the stored profiles: run the definitions over the recorded input of this
        /// range (`30d`, or `2026-01-01..2026-02-01`) into scratch state in memory, and count
        /// entries and exits per day.
        #[arg(long, value_name = "RANGE")]
        history: Option<String>,
        /// The report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the cases of a rules test file (shoppers' stories and what must hold when) through
    /// the core with these segment definitions; exit status 1 if any expectation fails, 2 if a
    /// file cannot be read or is wrong.
    Test {
        /// The segment definitions.
        #[arg(value_name = "SEGMENTS")]
        segments: PathBuf,
        /// The cases (see examples/segments.test.yaml).
        #[arg(value_name = "CASES")]
        cases: PathBuf,
    },
    /// Why a shopper is (or is not) in a segment: the rule evaluated for the shopper now, each
    /// sub-expression with its value, and when the passing of time will next change it
    /// (read-only; the worker may be running).
    Explain {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The profile key, or an identity linked to it.
        key: String,
        /// The segment id.
        segment: String,
        /// The JSON document of `GET /profiles/{id}/explain` instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print a profile from the worker's state as JSON (read-only; the worker may be running).
    Profile {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The profile key (the shopper key of the input messages), or an identity linked to it.
        #[arg(required_unless_present = "all")]
        key: Option<String>,
        /// Every profile instead, one JSON document per line, by partition and key (audits, and
        /// comparing two runs).
        #[arg(long, conflicts_with = "key")]
        all: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Dataset {
    /// UCI Online Retail (invoices and cancellations).
    UciOnlineRetail,
    /// REES46 e-commerce behaviour (view, cart, purchase).
    Rees46,
}

fn init_logging(format: &str, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn load_config(path: &Path) -> anyhow::Result<tailor::config::Settings> {
    Ok(Config::from_file(path)?.validate()?)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested: finishing the current batch");
}

/// A runtime started from within another's async context, shut down without waiting when
/// dropped (on every path out, errors and panics included): dropping a runtime there
/// otherwise panics.
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl OwnRuntime {
    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("running until dropped").handle()
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

fn main() -> std::process::ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    match cli.command {
        Command::Run { config } => {
            let settings = load_config(&config)?;
            init_logging(&settings.config.log.format, &settings.config.log.level);
            if !settings.config.processing.transparent_huge_pages {
                // Before the processing threads start and the heaps grow.
                if let Err(e) = tailor::heap::disable_transparent_huge_pages() {
                    tracing::warn!(error = %e, "could not turn transparent huge pages off for the process (processing.transparent_huge_pages = false); going on with the system's setting");
                }
            }
            tracing::info!(
                transparent_huge_pages = ?tailor::heap::transparent_huge_pages_enabled(),
                "memory: the kernel's transparent huge pages for this process"
            );
            let metrics = Arc::new(tailor::metrics::Metrics::new());
            let health = Arc::new(tailor::http::Health::new());
            let token = tailor::http::resolve_token(
                std::env::var("TAILOR_HTTP_TOKEN").ok().as_deref(),
                settings.config.http.token.as_deref(),
            )
            .map_err(|e| anyhow::anyhow!(e))?;
            let api = Arc::new(tailor::http::Api::new(token));
            let reload = Arc::new(AtomicU64::new(0));
            #[cfg(unix)]
            {
                let reload = reload.clone();
                let mut hup =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                        .context("installing the SIGHUP handler")?;
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        tracing::info!("SIGHUP: reloading the segment definitions");
                        reload.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let mut http_stop = stop_rx.clone();
            // The HTTP server has a runtime (and a thread) of its own: when the processing
            // threads were tasks of this one, applying messages for long stretches without
            // yielding, /healthz, /readyz and /metrics waited behind them (up to 1.7 s in the
            // deep bench; longer in debug builds). They now have threads of their own too.
            let http_rt = OwnRuntime(Some(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("tailor-http")
                    .enable_all()
                    .build()
                    .context("starting the HTTP server's runtime")?,
            ));
            let (listen, hosts) = (settings.listen, settings.config.http.hosts.clone());
            let (m, h, a) = (metrics.clone(), health.clone(), api.clone());
            let server = http_rt
                .handle()
                .spawn(async move {
                    let stop = async move {
                        let _ = http_stop.wait_for(|s| *s).await;
                    };
                    tailor::http::serve(listen, m, h, a, &hosts, stop).await
                })
                .await
                .context("starting the HTTP server")?
                .with_context(|| format!("binding http.listen {listen}"))?;
            tracing::info!(addr = %listen, "serving /metrics, /healthz, /readyz");
            let http = http_rt.handle().spawn(server);
            let result =
                tailor::worker::run(settings, metrics, health, api, reload, shutdown_signal())
                    .await;
            let _ = stop_tx.send(true);
            let _ = http.await;
            drop(http_rt);
            result.map(|_| std::process::ExitCode::SUCCESS)
        }
        Command::Check { segments, config } => {
            if segments.is_none() && config.is_none() {
                bail!("give --segments FILE and/or --config FILE");
            }
            let mut ok = true;
            if let Some(path) = segments {
                let src = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                match SegmentSet::parse(&src) {
                    Ok(set) => {
                        println!(
                            "{}: {} segments, {} journeys OK",
                            path.display(),
                            set.len(),
                            set.journeys().len()
                        );
                        for s in set.segments() {
                            println!("  {:<28} {}", s.id, s.name.as_deref().unwrap_or(""));
                        }
                        for j in set.journeys() {
                            println!("  journey {:<20} {}", j.id, j.name.as_deref().unwrap_or(""));
                        }
                    }
                    Err(errs) => {
                        ok = false;
                        for e in errs.0 {
                            println!("{}:{e}", path.display());
                        }
                    }
                }
            }
            if let Some(path) = config {
                match load_config(&path) {
                    Ok(s) => {
                        // librdkafka judges the [kafka] properties: an unknown or misspelt
                        // one, or a SASL mechanism this build cannot use, fails here, not at run.
                        let problems = tailor::worker::check_kafka_properties(&s);
                        if problems.is_empty() {
                            println!(
                                "{}: OK ({} segments, {} processing thread{})",
                                path.display(),
                                s.segments.len(),
                                s.threads,
                                if s.threads == 1 { "" } else { "s" }
                            );
                        } else {
                            ok = false;
                            for p in problems {
                                println!("{}: {p}", path.display());
                            }
                        }
                    }
                    Err(e) => {
                        ok = false;
                        println!("{}: {e}", path.display());
                    }
                }
            }
            Ok(if ok {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::from(1)
            })
        }
        Command::Replay {
            dataset,
            file,
            config,
            brokers,
            limit,
            rate,
            sort,
            opted_in,
            browsing,
        } => {
            init_logging("human", "info");
            let mut c = match &config {
                Some(p) => Config::from_file(p)?,
                None => Config::default(),
            };
            if let Some(b) = brokers {
                c.kafka.insert("bootstrap.servers".into(), b);
            }
            if opted_in > 0 && !matches!(dataset, Dataset::UciOnlineRetail) {
                bail!("--opted-in applies to --dataset uci-online-retail (its customers have ids)");
            }
            if browsing && !matches!(dataset, Dataset::UciOnlineRetail) {
                bail!("--browsing applies to --dataset uci-online-retail");
            }
            if browsing && !sort {
                bail!("--browsing makes events before each order's time: add --sort");
            }
            replay(&c, dataset, &file, limit, rate, sort, (opted_in, browsing)).await?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Topics {
            config,
            partitions,
            replication,
        } => {
            init_logging("human", "warn");
            let c = Config::from_file(&config)?;
            create_topics(&c, partitions, replication).await?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Changes {
            config,
            limit,
            idle,
        } => {
            let c = Config::from_file(&config)?;
            print_changes(&c, limit, idle.into())?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Schemas {
            config,
            file,
            json,
            register,
        } => schemas(config, file, json, register).await,
        Command::Test { segments, cases } => test_rules(&segments, &cases),
        Command::Preview {
            config,
            segments,
            sample,
            show_emails,
            partitions,
            history,
            json,
        } => {
            let settings = load_config(&config)?;
            let src = std::fs::read_to_string(&segments)
                .with_context(|| format!("reading {}", segments.display()))?;
            let new = tailor::segments::SegmentSet::parse(&src)
                .map_err(|e| anyhow::anyhow!("{}:\n{e}", segments.display()))?;
            if let Some(range) = history {
                use tailor::preview::history;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_millis() as i64;
                let range = history::parse_range(&range, now).map_err(|e| anyhow::anyhow!(e))?;
                let started = Instant::now();
                let report = tokio::task::spawn_blocking(move || {
                    history::run(&settings, &Arc::new(new), range, &mut |what| {
                        eprintln!("preview: {what} ({:.0} s)", started.elapsed().as_secs_f64())
                    })
                })
                .await??;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print!("{}", history::to_text(&report));
                }
                return Ok(std::process::ExitCode::SUCCESS);
            }
            let store = tailor::store::Store::open_read_only(&settings.config.state.path)?;
            note_state_on_disk(&store, &settings.config);
            let in_force = definitions_in_force(&store, &settings)?;
            let in_force = &in_force;
            let total = store.estimated_profiles().max(1);
            let started = Instant::now();
            let mut last = Instant::now();
            let report = tailor::preview::run(
                &store,
                in_force,
                &new,
                partitions.as_deref(),
                sample,
                show_emails,
                |done| {
                    if last.elapsed() >= Duration::from_secs(2) {
                        last = Instant::now();
                        eprintln!(
                            "preview: {done} of about {total} profiles ({:.0}%), {:.0}/s",
                            (100.0 * done as f64 / total as f64).min(100.0),
                            done as f64 / started.elapsed().as_secs_f64()
                        );
                    }
                },
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", tailor::preview::to_text(&report));
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Explain {
            config,
            key,
            segment,
            json,
        } => {
            let settings = load_config(&config)?;
            let store = tailor::store::Store::open_read_only(&settings.config.state.path)?;
            note_state_on_disk(&store, &settings.config);
            let in_force = definitions_in_force(&store, &settings)?;
            // E-mails are kept trimmed and lower-cased, as the HTTP lookup finds them.
            let key = if key.contains('@') {
                tailor::event::normalise_email(&key).unwrap_or(key)
            } else {
                key
            };
            let Some((partition, profile_key, p)) = store.find_profile(&key)? else {
                eprintln!("no profile for this identity");
                return Ok(std::process::ExitCode::from(2));
            };
            let now = tailor::http::stream_now(store.clock(partition)?, &p);
            let doc =
                tailor::http::explain_doc(&in_force, &profile_key, partition, &p, &segment, now)
                    .map_err(|e| anyhow::anyhow!(e))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                print!("{}", explain_text(&doc));
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Profile { config, key, all } => {
            let c = Config::from_file(&config)?;
            let store = tailor::store::Store::open_read_only(&c.state.path)?;
            note_state_on_disk(&store, &c);
            let Some(key) = key.filter(|_| !all) else {
                use std::io::Write;
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                for partition in store.partitions()? {
                    for key in store.profile_keys(partition)? {
                        if let Some(p) = store.profile(partition, &key)? {
                            let v = tailor::http::render(&key, partition, &p);
                            writeln!(out, "{}", serde_json::to_string(&v)?)?;
                        }
                    }
                }
                out.flush()?;
                return Ok(std::process::ExitCode::SUCCESS);
            };
            match store.find_profile(&key)? {
                Some((partition, profile_key, p)) => {
                    let v = tailor::http::render(&profile_key, partition, &p);
                    println!("{}", serde_json::to_string_pretty(&v)?);
                    Ok(std::process::ExitCode::SUCCESS)
                }
                None => {
                    eprintln!("no profile for this identity");
                    Ok(std::process::ExitCode::from(2))
                }
            }
        }
    }
}

/// Says on stderr how recent the state on disk is, when a running worker may hold newer
/// commits in memory only (no write-ahead log: they reach the disk at its next flush).
fn note_state_on_disk(store: &tailor::store::Store, c: &Config) {
    if c.state.write_ahead_log() {
        return;
    }
    if let Ok(Some(at)) = store.state_as_of() {
        let t = std::time::UNIX_EPOCH + Duration::from_millis(at.max(0) as u64);
        eprintln!(
            "tailor: reading the state on disk, current as of {} (a running worker flushes it at least every state.flush_interval = {}; its HTTP API serves the latest)",
            humantime::format_rfc3339_seconds(t),
            c.state.flush_interval
        );
    }
}

/// The definitions the worker has in force (stored with its state), else the config's file; a
/// note on stderr when they differ (the file was edited and not reloaded, or its reload was
/// refused).
fn definitions_in_force(
    store: &tailor::store::Store,
    settings: &tailor::config::Settings,
) -> anyhow::Result<tailor::segments::SegmentSet> {
    let stored = store
        .meta(tailor::worker::DEFINITIONS_KEY)?
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| tailor::segments::SegmentSet::parse(&s).ok());
    Ok(match stored {
        Some(set) => {
            if set.fingerprint() != settings.segments.fingerprint() {
                eprintln!(
                    "note: the worker's definitions in force differ from {} (edited and not reloaded?); using those in force",
                    settings.config.segments.file.display()
                );
            }
            set
        }
        None => settings.segments.clone(),
    })
}

/// `tailor test`: every case, its failures with the rule explained, and a summary.
fn test_rules(segments: &Path, cases: &Path) -> anyhow::Result<std::process::ExitCode> {
    use tailor::segments::SegmentSet;
    let read =
        |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    // A file that cannot be read or is wrong: exit status 2 (1 is for failed expectations).
    let bad = |e: String| {
        eprintln!("error: {e}");
        Ok(std::process::ExitCode::from(2))
    };
    let set = match read(segments).map(|src| SegmentSet::parse(&src)) {
        Ok(Ok(set)) => Arc::new(set),
        Ok(Err(e)) => return bad(format!("{}:\n{e}", segments.display())),
        Err(e) => return bad(format!("{e:#}")),
    };
    let parsed = match read(cases).map(|src| tailor::cases::Cases::parse(&src, &set)) {
        Ok(Ok(parsed)) => parsed,
        Ok(Err(e)) => return bad(format!("{}: {e}", cases.display())),
        Err(e) => return bad(format!("{e:#}")),
    };
    let outcomes = parsed.run(&set);
    let (mut checks, mut failed) = (0, 0);
    for o in &outcomes {
        checks += o.checks;
        if o.failures.is_empty() {
            println!("ok    {}", o.name);
        } else {
            failed += 1;
            println!("FAIL  {}", o.name);
            for f in &o.failures {
                for line in f.lines() {
                    println!("        {line}");
                }
            }
        }
    }
    let (segs, journeys) = parsed.named();
    let untested: Vec<&str> = set
        .segments()
        .iter()
        .map(|s| s.id.as_str())
        .filter(|id| !segs.iter().any(|s| s == id))
        .chain(
            set.journeys()
                .iter()
                .map(|j| j.id.as_str())
                .filter(|id| !journeys.iter().any(|s| s == id)),
        )
        .collect();
    if !untested.is_empty() {
        println!("not named by any expectation: {}", untested.join(", "));
    }
    println!(
        "{} cases, {checks} checks: {} passed, {failed} failed",
        outcomes.len(),
        outcomes.len() - failed
    );
    Ok(if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

/// `tailor explain`'s text: the verdict, then the rule's tree, one sub-expression per line.
fn explain_text(doc: &serde_json::Value) -> String {
    use tailor::replay::format_time;
    let tree: tailor::segments::Evaluated =
        serde_json::from_value(doc["tree"].clone()).expect("explain_doc's tree is an Evaluated");
    let mut out = format!(
        "segment {} ({}): {} at {}; {}\n",
        doc["segment"].as_str().unwrap_or_default(),
        doc["name"].as_str().unwrap_or("no name"),
        tree.value,
        format_time(doc["evaluated_at"].as_i64().unwrap_or_default()),
        match doc["member_since"].as_i64() {
            Some(t) => format!("member since {}", format_time(t)),
            None => "not a member".into(),
        },
    );
    tree.to_text(&mut out, 0, &format_time);
    match tree.changes_at {
        Some(t) => out.push_str(&format!(
            "with no new event, the result may change at {}\n",
            format_time(t)
        )),
        None => out.push_str("time alone will not change the result\n"),
    }
    out
}

fn print_changes(c: &Config, limit: usize, idle: Duration) -> anyhow::Result<()> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    let mut cfg = kafka_config(c);
    cfg.set("group.id", format!("tailor-changes-{}", std::process::id()))
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = cfg.create().context("creating the Kafka consumer")?;
    let topic = &c.topics.audience_changes;
    let meta = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .context("reading topic metadata")?;
    let partitions = meta.topics().first().map_or(0, |t| t.partitions().len()) as i32;
    if partitions == 0 {
        bail!("topic {topic} does not exist");
    }
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut seen = 0;
    let mut last = Instant::now();
    while seen < limit && last.elapsed() < idle {
        let Some(msg) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let msg = msg?;
        last = Instant::now();
        let Some(payload) = msg.payload() else {
            continue;
        };
        match tailor::codec::decode::audience_change(payload) {
            Ok(ch) => {
                println!(
                    "{:<7} {:<22} profile={:<12} at={} cause={} id={}",
                    ch.direction.as_str(),
                    ch.segment_id,
                    ch.profile_key,
                    tailor::replay::format_time(ch.event_time),
                    ch.cause.event_type.as_deref().unwrap_or(&ch.cause.kind),
                    ch.id
                );
                if let Some(e) = &ch.explanation {
                    let operands: Vec<String> = e
                        .operands
                        .iter()
                        .map(|o| format!("{} {} -> {}", o.expression, o.before, o.after))
                        .collect();
                    println!(
                        "        because {} ({}:{}) {} -> {}{}",
                        e.expression,
                        e.line,
                        e.column,
                        e.before,
                        e.after,
                        if operands.is_empty() {
                            String::new()
                        } else {
                            format!("; {}", operands.join(", "))
                        }
                    );
                }
                seen += 1;
            }
            Err(e) => println!(
                "(undecodable record at {}:{}: {e})",
                msg.partition(),
                msg.offset()
            ),
        }
    }
    Ok(())
}

fn kafka_config(c: &Config) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    for (k, v) in &c.kafka {
        cfg.set(k, v);
    }
    cfg
}

async fn create_topics(c: &Config, partitions: i32, replication: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = kafka_config(c)
        .create()
        .context("creating the admin client")?;
    let t = &c.topics;
    let names = [
        &t.storefront,
        &t.backoffice,
        &t.profile,
        &t.audience_changes,
        &t.journey_triggers,
        &t.dead_letter,
        &t.repartition,
    ];
    let mut topics: Vec<NewTopic> = names
        .iter()
        .map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(replication)))
        .collect();
    if c.state.changelog {
        let mut changelog = NewTopic::new(
            &t.changelog,
            partitions,
            TopicReplication::Fixed(replication),
        );
        for (k, v) in tailor::worker::CHANGELOG_CONFIG {
            changelog = changelog.set(k, v);
        }
        topics.push(changelog);
    }
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin
        .create_topics(&topics, &opts)
        .await
        .context("creating topics")?
    {
        match result {
            Ok(name) => println!("created {name} ({partitions} partitions)"),
            Err((name, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                println!("exists  {name}")
            }
            Err((name, e)) => bail!("creating topic {name}: {e}"),
        }
    }
    Ok(())
}

async fn schemas(
    config: Option<PathBuf>,
    file: Option<PathBuf>,
    json: bool,
    register: bool,
) -> anyhow::Result<std::process::ExitCode> {
    use tailor::codec::{SchemaInfo, SCHEMA_FILES};
    let mut infos = Vec::new();
    if let Some(file) = &file {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let info = SchemaInfo::of(&file.display().to_string(), &text)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        infos.push(info);
    } else {
        for (path, text) in SCHEMA_FILES {
            infos.push(
                SchemaInfo::of(&format!("avro/{path}"), text)
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            );
        }
    }
    let settings = config.as_deref().map(load_config).transpose()?;
    if let Some(dir) = settings
        .as_ref()
        .and_then(|s| s.config.schemas.dir.as_ref())
    {
        let mut catalog = tailor::codec::SchemaCatalog::builtin().clone();
        let (loaded, refused) = tailor::schemas::load(&mut catalog, dir);
        infos.extend(loaded);
        if !refused.is_empty() {
            anyhow::bail!("schemas.dir: {}", refused.join("; "));
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&infos)?);
    } else {
        for i in &infos {
            println!("{}  {}  {}", i.fingerprint, i.name, i.file);
        }
        println!("(fingerprint: CRC-64-AVRO of the Parsing Canonical Form, the 8 bytes after C3 01 in hex; legacy variants, also accepted: --json)");
    }
    let Some(settings) = settings else {
        return Ok(std::process::ExitCode::SUCCESS);
    };
    let c = &settings.config;
    let Some(registry) =
        tailor::registry::Registry::from_config(&c.schema_registry, settings.registry_timeout)?
    else {
        return Ok(std::process::ExitCode::SUCCESS);
    };
    let catalog = tailor::codec::SchemaCatalog::builtin();
    let mut ok = true;
    let inputs = [
        (
            &c.topics.storefront,
            tailor::codec::Family::Storefront.record_name(),
        ),
        (
            &c.topics.backoffice,
            tailor::codec::Family::Backoffice.record_name(),
        ),
        (
            &c.topics.profile,
            tailor::codec::Family::Profile.record_name(),
        ),
    ];
    let outputs = [
        (&c.topics.audience_changes, tailor::codec::AUDIENCE_CHANGE),
        (&c.topics.journey_triggers, tailor::codec::JOURNEY_TRIGGER),
        (&c.topics.dead_letter, tailor::codec::DEAD_LETTER),
    ];
    let reg = Arc::new(registry);
    for (topic, record) in inputs {
        let subject = format!("{topic}-value");
        let schema = catalog.reader_json(record).expect("built in");
        let r = reg.clone();
        let s = subject.clone();
        match tokio::task::spawn_blocking(move || r.compatible(&s, schema)).await? {
            Ok(None) => println!("{subject}: no versions in the registry yet"),
            Ok(Some((true, _))) => println!("{subject}: compatible with the latest version"),
            Ok(Some((false, why))) => {
                ok = false;
                println!(
                    "{subject}: NOT compatible with the latest version: {}",
                    why.join("; ")
                );
            }
            Err(e) => anyhow::bail!("{e}"),
        }
    }
    for (topic, record) in outputs.into_iter().filter(|_| register) {
        let subject = format!("{topic}-value");
        let schema = catalog.reader_json(record).expect("built in");
        let r = reg.clone();
        let s = subject.clone();
        let id = tokio::task::spawn_blocking(move || r.register(&s, schema)).await??;
        println!("{subject}: output schema {record} registered as id {id}");
    }
    Ok(if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

async fn replay(
    c: &Config,
    dataset: Dataset,
    file: &Path,
    limit: Option<u64>,
    rate: Option<u64>,
    sort: bool,
    (opted_in, browsing): (u8, bool),
) -> anyhow::Result<()> {
    use tailor::codec::Family;
    use tailor::replay::{OrderCheck, Produced, Rees46Reader, ReplayReader, UciReader};

    let open = || {
        match dataset {
            Dataset::UciOnlineRetail => UciReader::open(file)
                .map(|r| ReplayReader::Uci(r.opted_in(opted_in).browsing(browsing))),
            Dataset::Rees46 => Rees46Reader::open(file).map(ReplayReader::Rees46),
        }
        .with_context(|| format!("opening {}", file.display()))
    };
    // First pass: is the file in event-time order (as far as --limit reaches)? Events produced
    // out of order reach the worker late, and time-based memberships come out wrong.
    if !std::fs::metadata(file)
        .with_context(|| format!("opening {}", file.display()))?
        .is_file()
    {
        bail!(
            "{}: not a regular file (a pipe?); replay reads the file twice, to check its time order first",
            file.display()
        );
    }
    let mut check = OrderCheck::default();
    for ev in open()?.take(limit.map_or(usize::MAX, |l| l as usize)) {
        check.see(ev.time);
    }
    let mut reader = open()?;
    let sorted: Option<Vec<Produced>> = if check.in_order() {
        None
    } else if sort {
        let mut all: Vec<Produced> = reader.by_ref().collect();
        all.sort_by_key(|e| e.time);
        eprintln!(
            "{}: {} of {} events were out of event-time order; producing them sorted",
            file.display(),
            check.out_of_order,
            check.events
        );
        Some(all)
    } else {
        let (at, time, latest) = check.first.expect("out of order");
        bail!(
            "{} is not in event-time order: {} of {} events are earlier than an event before them (the first is event {at}, at {}, after one at {}). Producing it in file order would make them late to the worker and time-based memberships wrong. Sort the file by time, or run again with --sort (holds every event in memory).",
            file.display(),
            check.out_of_order,
            check.events,
            tailor::replay::format_time(time),
            tailor::replay::format_time(latest),
        );
    };

    let mut cfg = kafka_config(c);
    cfg.set("enable.idempotence", "true")
        .set("linger.ms", "20")
        // Kafka's default partitioner (murmur2), as the platform's Java producers use.
        .set("partitioner", "murmur2_random")
        .set("compression.type", "lz4");
    cfg.set("queue.buffering.max.messages", "500000");
    let producer: FutureProducer = cfg.create().context("creating the Kafka producer")?;
    let events: Box<dyn Iterator<Item = Produced> + '_> = match sorted {
        Some(all) => Box::new(all.into_iter()),
        None => Box::new(reader.by_ref()),
    };
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {elapsed} {pos} events produced ({per_sec}) {msg}",
        )
        .expect("valid template"),
    );
    let started = Instant::now();
    let mut in_flight = std::collections::VecDeque::new();
    let mut by_type: std::collections::BTreeMap<&str, u64> = Default::default();
    let mut n = 0u64;
    let mut failed = 0u64;
    for ev in events {
        if limit.is_some_and(|l| n >= l) {
            break;
        }
        let topic = match ev.family {
            Family::Storefront => &c.topics.storefront,
            Family::Backoffice => &c.topics.backoffice,
            Family::Profile => &c.topics.profile,
        };
        let mut record = FutureRecord::to(topic)
            .key(&ev.key)
            .payload(&ev.payload)
            .timestamp(ev.time);
        loop {
            match producer.send_result(record) {
                Ok(f) => {
                    in_flight.push_back(f);
                    break;
                }
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    r,
                )) => {
                    record = r;
                    if let Some(f) = in_flight.pop_front() {
                        if !matches!(f.await, Ok(Ok(_))) {
                            failed += 1;
                        }
                    }
                }
                Err((e, _)) => bail!("producing to {topic}: {e}"),
            }
        }
        while in_flight.len() > 200_000 {
            if !matches!(in_flight.pop_front().expect("non-empty").await, Ok(Ok(_))) {
                failed += 1;
            }
        }
        *by_type.entry(ev.event_type).or_default() += 1;
        n += 1;
        bar.set_position(n);
        if let Some(rate) = rate.filter(|r| *r > 0) {
            let due = Duration::from_secs_f64(n as f64 / rate as f64);
            let elapsed = started.elapsed();
            if due > elapsed {
                tokio::time::sleep(due - elapsed).await;
            }
        }
    }
    for f in in_flight {
        if !matches!(f.await, Ok(Ok(_))) {
            failed += 1;
        }
    }
    producer
        .flush(Duration::from_secs(30))
        .context("flushing the producer")?;
    bar.finish_and_clear();
    let s = reader.skipped().clone();
    let secs = started.elapsed().as_secs_f64();
    let types: Vec<String> = by_type.iter().map(|(t, n)| format!("{t}={n}")).collect();
    println!(
        "replayed {n} events in {secs:.1}s ({:.0}/s): {}; skipped rows: no customer id {}, adjustments {}, unparsable {}; delivery failures {failed}",
        n as f64 / secs.max(1e-9),
        types.join(" "),
        s.no_customer,
        s.adjustments,
        s.unparsable
    );
    if failed > 0 {
        bail!("{failed} events were not delivered");
    }
    Ok(())
}

//! The `atelier` command line: `serve` (the default), `user add|mod|del|list`,
//! `model add|list|del`, `audit`,
//! `migrate` and `config check`. Exit codes follow the reference's tools: 0 success, 1 any
//! failure (including a cancelled prompt), 2 argument errors (clap's own).

mod audit;
mod content;
mod model;
mod prompt;
mod user;

use crate::config::{Config, LoadOptions};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "atelier",
    version,
    about = "A multi-user image-generation server speaking InvokeAI's API"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    root: RootArgs,
    #[command(flatten)]
    listen: ListenArgs,
}

#[derive(Debug, Clone, Args, Default)]
pub struct RootArgs {
    /// Root directory (else INVOKEAI_ROOT, else the virtualenv's parent, else ~/invokeai).
    #[arg(long, short = 'r', global = true, value_name = "PATH")]
    pub root: Option<PathBuf>,
    /// Config file; a relative path is taken against the root.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, Args, Default)]
pub struct ListenArgs {
    /// Listen address, overriding `host` from the config.
    #[arg(long)]
    pub host: Option<String>,
    /// Listen port, overriding `port` from the config.
    #[arg(long)]
    pub port: Option<u16>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve(ListenArgs),
    /// Manage user accounts directly in the database (works while a server runs).
    #[command(subcommand)]
    User(user::UserCommand),
    /// Install, list and remove models directly in the database and models directory.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Show the audit log.
    Audit(audit::AuditArgs),
    /// Manage content ownership.
    #[command(subcommand)]
    Content(content::ContentCommand),
    /// Apply pending database migrations and exit.
    Migrate,
    /// Validate the configuration and exit.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Load and validate the configuration, printing warnings and the effective values.
    Check,
}

fn environment() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// Loads the configuration the way every subcommand does and reports warnings on stderr.
pub(crate) fn load_config(
    root: &RootArgs,
    host: Option<String>,
    port: Option<u16>,
) -> Result<Config, String> {
    let opts = LoadOptions {
        root: root.root.clone(),
        config: root.config.clone(),
        host,
        port,
    };
    let (config, warnings) = Config::load(&opts, &environment()).map_err(|e| e.to_string())?;
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    Ok(config)
}

/// Entry point used by `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let root = cli.root;
    match cli.command {
        None => runtime.block_on(serve(root, cli.listen)),
        Some(Command::Serve(listen)) => runtime.block_on(serve(root, listen)),
        Some(Command::User(cmd)) => {
            init_logging("warning");
            runtime.block_on(user::run(cmd, root))
        }
        Some(Command::Model(cmd)) => {
            init_logging("warning");
            runtime.block_on(model::run(cmd, root))
        }
        Some(Command::Audit(args)) => {
            init_logging("warning");
            runtime.block_on(audit::run(args, root))
        }
        Some(Command::Content(cmd)) => {
            init_logging("warning");
            runtime.block_on(content::run(cmd, root))
        }
        Some(Command::Migrate) => {
            init_logging("info");
            runtime.block_on(migrate(root))
        }
        Some(Command::Config(ConfigCommand::Check)) => {
            init_logging("info");
            match load_config(&root, None, None) {
                Ok(config) => {
                    println!("Configuration OK: {}", config.config_path().display());
                    match serde_json::to_string_pretty(&config.runtime_config_json()) {
                        Ok(text) => println!("{text}"),
                        Err(err) => eprintln!("{err}"),
                    }
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("{err}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Installs the log subscriber for the admin commands. `RUST_LOG` wins when set.
pub fn init_logging(level: &str) -> crate::logging::LogControl {
    crate::logging::init(level)
}

async fn migrate(root: RootArgs) -> ExitCode {
    let config = match load_config(&root, None, None) {
        Ok(c) => c,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::FAILURE;
        }
    };
    match crate::open_store(&config).await {
        Ok(store) => {
            match store.schema_version().await {
                Ok(v) => println!(
                    "Database {} is at schema version {v}",
                    config.database_path().display()
                ),
                Err(err) => eprintln!("{err}"),
            }
            store.close().await;
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{err}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(root: RootArgs, listen: ListenArgs) -> ExitCode {
    let started = std::time::Instant::now();
    // Logging needs the config's level, and loading the config may warn: load first with a
    // provisional subscriber level taken from the environment only.
    let config = match load_config_quietly(&root, &listen) {
        Ok(pair) => pair,
        Err(err) => {
            init_logging("info");
            tracing::error!("{err}");
            eprintln!("{err}");
            return ExitCode::FAILURE;
        }
    };
    let (config, warnings) = config;
    let log = init_logging(config.log_level());
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    let (host, port) = (config.host().to_owned(), config.port());
    let multiuser = config.multiuser();
    let root = config.root().display().to_string();
    let state = match crate::build_state(config).await {
        Ok(state) => crate::state::AppState { log, ..state },
        Err(err) => {
            tracing::error!("{err}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match crate::bind(&host, port).await {
        Ok(l) => l,
        Err(err) => {
            tracing::error!("{err}");
            return ExitCode::FAILURE;
        }
    };
    let server = match crate::start(state, listener) {
        Ok(s) => s,
        Err(err) => {
            tracing::error!("{err}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        root,
        multiuser,
        startup_ms = started.elapsed().as_millis() as u64,
        "Atelier {} listening on http://{}",
        env!("CARGO_PKG_VERSION"),
        server.addr
    );
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    ExitCode::SUCCESS
}

fn load_config_quietly(
    root: &RootArgs,
    listen: &ListenArgs,
) -> Result<(Config, Vec<String>), String> {
    let opts = LoadOptions {
        root: root.root.clone(),
        config: root.config.clone(),
        host: listen.host.clone(),
        port: listen.port,
    };
    Config::load(&opts, &environment()).map_err(|e| e.to_string())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

//! `atelier model add|list|del`: the model manager from the shell. Like `atelier user …` it
//! opens the database directly (so it also works while a server runs) and uses the same
//! services as the API: identification, placement and the download guard are identical.

use super::{load_config, RootArgs};
use crate::service::models::download::{self, DownloadPolicy, Progress};
use crate::service::models::{self, install, record::Record, ListQuery, Placement};
use crate::service::AdminProof;
use crate::state::AppState;
use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Install a model from a local path or an http(s) URL.
    Add(AddArgs),
    /// List installed models.
    List(ListArgs),
    /// Remove a model (its files too when they are inside the models directory).
    Del(DelArgs),
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// A .safetensors file, a diffusers folder, or an http(s) URL.
    source: String,
    /// Display name (default: the file or folder name).
    #[arg(long, short = 'n')]
    name: Option<String>,
    /// Register a local model where it is instead of moving it into the models directory.
    #[arg(long)]
    inplace: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct DelArgs {
    /// The model's key, or its name when that is unique.
    model: String,
}

pub async fn run(command: ModelCommand, root: RootArgs) -> ExitCode {
    let state = match open(&root).await {
        Ok(state) => state,
        Err(message) => {
            println!("❌ Unexpected error: {message}");
            return ExitCode::FAILURE;
        }
    };
    let code = match command {
        ModelCommand::Add(args) => add(&state, args).await,
        ModelCommand::List(args) => list(&state, args).await,
        ModelCommand::Del(args) => delete(&state, args).await,
    };
    state.store.close().await;
    code
}

async fn open(root: &RootArgs) -> Result<AppState, String> {
    let config = load_config(root, None, None)?;
    crate::build_state(config).await.map_err(|e| e.to_string())
}

fn text<'a>(record: &'a Record, field: &str) -> &'a str {
    record.get(field).and_then(Value::as_str).unwrap_or("")
}

fn fail(message: &str) -> ExitCode {
    println!("❌ Error: {message}");
    ExitCode::FAILURE
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Draws a one-line progress bar on stderr.
fn draw_progress(p: Progress) {
    let line = match p.total.filter(|t| *t > 0) {
        Some(total) => {
            let fraction = (p.bytes as f64 / total as f64).clamp(0.0, 1.0);
            let filled = (fraction * 30.0).round() as usize;
            format!(
                "\r[{}{}] {:>3.0}% {:.1}/{:.1} MiB",
                "#".repeat(filled),
                " ".repeat(30 - filled),
                fraction * 100.0,
                mib(p.bytes),
                mib(total)
            )
        }
        None => format!("\r{:.1} MiB", mib(p.bytes)),
    };
    let mut err = std::io::stderr();
    let _ = err.write_all(line.as_bytes());
    let _ = err.flush();
}

async fn add(state: &AppState, args: AddArgs) -> ExitCode {
    let source = match install::classify(&args.source, args.inplace, None) {
        Ok(source) => source,
        Err(err) => return fail(&err.detail()),
    };
    let mut changes = Map::new();
    if let Some(name) = &args.name {
        changes.insert("name".to_owned(), json!(name));
    }
    let outcome = match &source {
        install::JobSource::Local { path, inplace } => {
            let placement = if *inplace {
                Placement::InPlace
            } else {
                Placement::Move
            };
            models::register(
                state,
                &PathBuf::from(path),
                placement,
                &changes,
                path,
                "path",
            )
            .await
        }
        install::JobSource::Url { url, .. } => {
            let temp = models::models_dir(state)
                .join(format!("tmpinstall_{}", uuid::Uuid::new_v4().simple()));
            let policy = DownloadPolicy::from_config(&state.config);
            let (_stop, mut cancel) = tokio::sync::watch::channel(false);
            let mut last_percent = None;
            let mut on_progress = |p: Progress| {
                let percent = p.total.map(|t| p.bytes * 100 / t.max(1));
                if percent != last_percent || percent.is_none() {
                    last_percent = percent;
                    draw_progress(p);
                }
            };
            let fetched =
                download::download(&policy, url, None, &temp, &mut on_progress, &mut cancel).await;
            eprintln!();
            let outcome = match fetched {
                Ok(done) => {
                    models::register(state, &done.path, Placement::Move, &changes, url, "url").await
                }
                Err(err) => Err(models::Failure {
                    class: err.kind,
                    message: err.message,
                }),
            };
            let _ = tokio::fs::remove_dir_all(&temp).await;
            outcome
        }
    };
    match outcome {
        Ok(record) => {
            println!(
                "✅ Installed {} ({} {} {})",
                text(&record, "name"),
                text(&record, "base"),
                text(&record, "type"),
                text(&record, "format")
            );
            println!("   Key: {}", text(&record, "key"));
            println!("   Path: {}", text(&record, "path"));
            println!("   Hash: {}", text(&record, "hash"));
            ExitCode::SUCCESS
        }
        Err(failure) => fail(&failure.message),
    }
}

async fn list(state: &AppState, args: ListArgs) -> ExitCode {
    let query = ListQuery {
        order: atelier_store::ModelOrder::Default,
        ..Default::default()
    };
    let records = match models::list(state, &query).await {
        Ok(r) => r,
        Err(err) => return fail(&err.detail()),
    };
    if args.json {
        let values: Vec<Value> = records.into_iter().map(Value::Object).collect();
        println!("{}", Value::Array(values));
        return ExitCode::SUCCESS;
    }
    if records.is_empty() {
        println!("No models installed.");
        return ExitCode::SUCCESS;
    }
    println!(
        "{:<36}  {:<24}  {:<12}  {:<6}  {:<10}  PATH",
        "KEY", "NAME", "BASE", "TYPE", "FORMAT"
    );
    for r in &records {
        println!(
            "{:<36}  {:<24}  {:<12}  {:<6}  {:<10}  {}",
            text(r, "key"),
            text(r, "name"),
            text(r, "base"),
            text(r, "type"),
            text(r, "format"),
            text(r, "path")
        );
    }
    println!("{} model(s)", records.len());
    ExitCode::SUCCESS
}

async fn delete(state: &AppState, args: DelArgs) -> ExitCode {
    let key = match models::get(state, &args.model).await {
        Ok(r) => text(&r, "key").to_owned(),
        Err(_) => {
            let query = ListQuery {
                name: Some(args.model.clone()),
                ..Default::default()
            };
            let named = match models::list(state, &query).await {
                Ok(r) => r,
                Err(err) => return fail(&err.detail()),
            };
            match named.as_slice() {
                [one] => text(one, "key").to_owned(),
                [] => return fail(&format!("No model with key or name '{}'", args.model)),
                _ => {
                    return fail(&format!(
                        "{} models are named '{}'; give the key instead",
                        named.len(),
                        args.model
                    ))
                }
            }
        }
    };
    match models::delete(state, &AdminProof::command_line(), &key).await {
        Ok(()) => {
            println!("✅ Deleted model {key}");
            ExitCode::SUCCESS
        }
        Err(err) => fail(&err.detail()),
    }
}

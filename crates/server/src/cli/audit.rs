//! `atelier audit`: the audit log from the shell, newest first.

use super::{load_config, RootArgs};
use crate::http::audit::AuditRecord;
use atelier_domain::audit::AuditAction;
use atelier_store::AuditFilter;
use clap::Args;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// How many records to show (1 to 500).
    #[arg(long, default_value_t = 50)]
    limit: i64,
    /// Records to skip.
    #[arg(long, default_value_t = 0)]
    offset: i64,
    /// Only this action, e.g. login_failed.
    #[arg(long)]
    action: Option<String>,
    /// Only records where this user acted or was acted upon.
    #[arg(long)]
    user_id: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: AuditArgs, root: RootArgs) -> ExitCode {
    if let Some(action) = &args.action {
        if AuditAction::parse(action).is_none() {
            let known: Vec<&str> = AuditAction::ALL.iter().map(|a| a.as_str()).collect();
            eprintln!(
                "❌ Error: unknown action '{action}' (one of: {})",
                known.join(", ")
            );
            return ExitCode::FAILURE;
        }
    }
    let config = match load_config(&root, None, None) {
        Ok(c) => c,
        Err(err) => {
            eprintln!("❌ Error: {err}");
            return ExitCode::FAILURE;
        }
    };
    let store = match crate::open_store(&config).await {
        Ok(s) => s,
        Err(err) => {
            eprintln!("❌ Error: {err}");
            return ExitCode::FAILURE;
        }
    };
    let filter = AuditFilter {
        action: args.action,
        user_id: args.user_id,
    };
    let page = crate::service::audit::list_in(&store, &filter, args.offset, args.limit).await;
    store.close().await;
    let page = match page {
        Ok(p) => p,
        Err(err) => {
            eprintln!("❌ Error: {}", err.detail());
            return ExitCode::FAILURE;
        }
    };
    let records: Vec<AuditRecord> = page.items.into_iter().map(AuditRecord::from).collect();
    if args.json {
        let doc = serde_json::json!({ "items": records, "total": page.total });
        match serde_json::to_string_pretty(&doc) {
            Ok(text) => println!("{text}"),
            Err(err) => {
                eprintln!("❌ Error: {err}");
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }
    if records.is_empty() {
        println!("No audit records.");
        return ExitCode::SUCCESS;
    }
    println!(
        "{:<25} {:<18} {:<28} {:<28} {:<15} Detail",
        "Time (UTC)", "Action", "Actor", "Subject", "Client"
    );
    for r in &records {
        println!(
            "{:<25} {:<18} {:<28} {:<28} {:<15} {}",
            r.created_at,
            r.action,
            r.actor_email.as_deref().unwrap_or("-"),
            r.subject_email.as_deref().unwrap_or("-"),
            r.client.as_deref().unwrap_or("-"),
            r.detail.as_deref().unwrap_or("")
        );
    }
    println!("\nShowing {} of {} records.", records.len(), page.total);
    ExitCode::SUCCESS
}

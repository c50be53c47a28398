//! `atelier content reassign --from <email|system|user-id> --to <email>`: moves everything one
//! owner has to another user, in one transaction, with an audit record.

use super::{load_config, RootArgs};
use crate::service::{self, AdminProof};
use crate::state::AppState;
use atelier_domain::UserId;
use clap::{Args, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum ContentCommand {
    /// Give every board, image, workflow and style preset of one owner to another user.
    Reassign(ReassignArgs),
}

#[derive(Debug, Args)]
pub struct ReassignArgs {
    /// The current owner: an email, `system`, or the user id of a deleted user.
    #[arg(long)]
    from: String,
    /// The new owner's email.
    #[arg(long)]
    to: String,
}

pub async fn run(command: ContentCommand, root: RootArgs) -> ExitCode {
    let ContentCommand::Reassign(args) = command;
    let state = match load_config(&root, None, None) {
        Ok(config) => match crate::build_state(config).await {
            Ok(state) => state,
            Err(err) => {
                println!("❌ Unexpected error: {err}");
                return ExitCode::FAILURE;
            }
        },
        Err(err) => {
            println!("❌ Unexpected error: {err}");
            return ExitCode::FAILURE;
        }
    };
    let code = reassign(&state, &args).await;
    state.store.close().await;
    code
}

/// `system`, an email of an existing account, or else the text taken as a (deleted) user id.
async fn resolve_source(state: &AppState, from: &str) -> Result<UserId, String> {
    if from == atelier_domain::SYSTEM_USER_ID {
        return Ok(UserId::new(from));
    }
    if from.contains('@') {
        return match state.store.find_user_by_email(from).await {
            Ok(Some(user)) => Ok(user.user_id),
            Ok(None) => Err(format!("No user found with email '{from}'")),
            Err(err) => Err(err.to_string()),
        };
    }
    Ok(UserId::new(from))
}

async fn reassign(state: &AppState, args: &ReassignArgs) -> ExitCode {
    let from = match resolve_source(state, &args.from).await {
        Ok(id) => id,
        Err(err) => {
            println!("❌ Error: {err}");
            return ExitCode::FAILURE;
        }
    };
    let to = match state.store.find_user_by_email(&args.to).await {
        Ok(Some(user)) => user.user_id,
        Ok(None) => {
            println!("❌ Error: No user found with email '{}'", args.to);
            return ExitCode::FAILURE;
        }
        Err(err) => {
            println!("❌ Unexpected error: {err}");
            return ExitCode::FAILURE;
        }
    };
    let proof = AdminProof::command_line();
    match service::content::reassign(state, &proof, &from, &to, None, chrono::Utc::now()).await {
        Ok(counts) => {
            println!("✅ Content reassigned to {}", args.to);
            println!("   Boards: {}", counts.boards);
            println!("   Images: {}", counts.images);
            println!("   Workflows: {}", counts.workflows);
            println!("   Style presets: {}", counts.style_presets);
            ExitCode::SUCCESS
        }
        Err(err) => {
            println!("❌ Error: {}", err.detail());
            ExitCode::FAILURE
        }
    }
}

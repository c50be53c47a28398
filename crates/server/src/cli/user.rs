//! `atelier user add|mod|del|list`: the reference's `invoke-useradd`, `invoke-usermod`,
//! `invoke-userdel` and `invoke-userlist`, with the same flags, prompts, messages and exit
//! codes (auth.md §10). They work on the database directly, so they also work while a server
//! runs; the server sees each change on its next request. Passwords always meet the strict
//! policy here, whatever the server's setting.

use super::{load_config, prompt, RootArgs};
use crate::http::error::ApiError;
use crate::service::users::{self, CreateUserInput, Origin, UpdateUserInput};
use crate::service::AdminProof;
use crate::state::AppState;
use atelier_domain::email::normalize_email;
use atelier_domain::password::PasswordPolicy;
use atelier_domain::User;
use clap::{Args, Subcommand};
use std::process::ExitCode;

const POLICY: PasswordPolicy = PasswordPolicy::Strict;
const RUNNING_SERVER_NOTE: &str = "   ℹ️  A running server applies this to new requests immediately; already-open\n      connections are re-checked within about a minute.";

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user (interactive without --email/--password).
    Add(AddArgs),
    /// Change a user's name, password or admin role.
    Mod(ModArgs),
    /// Delete a user.
    Del(DelArgs),
    /// List users.
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct AddArgs {
    #[arg(long, short = 'e')]
    email: Option<String>,
    #[arg(long, short = 'p')]
    password: Option<String>,
    #[arg(long, short = 'n')]
    name: Option<String>,
    #[arg(long, short = 'a')]
    admin: bool,
}

#[derive(Debug, Args)]
pub struct ModArgs {
    #[arg(long, short = 'e')]
    email: Option<String>,
    #[arg(long, short = 'n')]
    name: Option<String>,
    #[arg(long, short = 'p')]
    password: Option<String>,
    #[arg(long, short = 'a', conflicts_with = "no_admin")]
    admin: bool,
    #[arg(long = "no-admin")]
    no_admin: bool,
}

#[derive(Debug, Args)]
pub struct DelArgs {
    #[arg(long, short = 'e')]
    email: Option<String>,
    #[arg(long, short = 'f')]
    force: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn run(command: UserCommand, root: RootArgs) -> ExitCode {
    let json = matches!(&command, UserCommand::List(ListArgs { json: true }));
    let state = match open(&root).await {
        Ok(state) => state,
        Err(message) => {
            if json {
                eprintln!("{}", serde_json::json!({ "error": message }));
            } else if matches!(&command, UserCommand::List(_)) {
                // invoke-userlist reports every failure this way (auth.md §10).
                println!("Error listing users: {message}");
            } else {
                println!("❌ Unexpected error: {message}");
            }
            return ExitCode::FAILURE;
        }
    };
    let code = match command {
        UserCommand::Add(args) => add(&state, args).await,
        UserCommand::Mod(args) => modify(&state, args).await,
        UserCommand::Del(args) => delete(&state, args).await,
        UserCommand::List(args) => list(&state, args).await,
    };
    state.store.close().await;
    code
}

async fn open(root: &RootArgs) -> Result<AppState, String> {
    let config = load_config(root, None, None)?;
    crate::build_state(config).await.map_err(|e| e.to_string())
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "Yes"
    } else {
        "No"
    }
}

fn print_details(user: &User) {
    println!("   User ID: {}", user.user_id);
    println!("   Email: {}", user.email);
    println!(
        "   Display Name: {}",
        user.display_name.as_deref().unwrap_or("(not set)")
    );
    println!("   Admin: {}", yes_no(user.is_admin));
    println!("   Active: {}", yes_no(user.is_active));
}

fn fail(err: &ApiError) -> ExitCode {
    match err {
        ApiError::Internal(source) => println!("❌ Unexpected error: {source}"),
        other => println!("❌ Error: {}", other.detail()),
    }
    ExitCode::FAILURE
}

fn io_fail(err: &std::io::Error) -> ExitCode {
    println!("❌ Unexpected error: {err}");
    ExitCode::FAILURE
}

/// What the password prompt produced.
enum NewPassword {
    Chosen(String),
    /// An empty answer where blank means "keep the current one".
    Keep,
    /// Input ended.
    Eof,
}

/// Asks for a password twice until both agree and the strict policy accepts it. With
/// `blank_keeps`, an empty first answer keeps the current password (usermod).
fn ask_new_password(first: &str, second: &str, blank_keeps: bool) -> std::io::Result<NewPassword> {
    loop {
        let Some(password) = prompt::password(first)? else {
            return Ok(NewPassword::Eof);
        };
        if blank_keeps && password.is_empty() {
            println!("Keeping existing password.");
            return Ok(NewPassword::Keep);
        }
        if let Err(err) = POLICY.check(&password) {
            println!("Error: {err}");
            println!();
            continue;
        }
        let Some(confirm) = prompt::password(second)? else {
            return Ok(NewPassword::Eof);
        };
        if password != confirm {
            println!("Error: Passwords do not match. Please try again.");
            println!();
            continue;
        }
        return Ok(NewPassword::Chosen(password));
    }
}

/// The reference reports a refused email through pydantic's error text.
fn email_error(input: &str, message: &str) {
    println!("❌ Error: 1 validation error for UserCreateRequest");
    println!("email");
    println!(
        "  {message} [type=value_error, input_value={}, input_type=str]",
        python_repr(input)
    );
}

/// Python's `repr` of a string, as pydantic prints input values.
fn python_repr(text: &str) -> String {
    if text.contains('\'') && !text.contains('"') {
        format!("\"{text}\"")
    } else {
        format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

async fn add(state: &AppState, args: AddArgs) -> ExitCode {
    let interactive = args.email.is_none() && args.password.is_none();
    let (email, name, password, admin) = if !interactive {
        let (Some(email), Some(password)) = (args.email, args.password) else {
            println!("❌ Error: Both --email and --password are required when using CLI mode");
            println!("   Run without arguments for interactive mode");
            return ExitCode::FAILURE;
        };
        (email, args.name, password, args.admin)
    } else {
        println!("=== Add InvokeAI User ===");
        println!();
        let email = match prompt::line("Email address: ") {
            Ok(Some(e)) if !e.trim().is_empty() => e.trim().to_owned(),
            Ok(_) => {
                println!("Error: Email is required");
                return ExitCode::FAILURE;
            }
            Err(err) => return io_fail(&err),
        };
        let name = match prompt::line("Display name (optional): ") {
            Ok(n) => n.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()),
            Err(err) => return io_fail(&err),
        };
        let password = match ask_new_password("Password: ", "Confirm password: ", false) {
            Ok(NewPassword::Chosen(p)) => p,
            Ok(_) => {
                println!("User creation cancelled.");
                return ExitCode::FAILURE;
            }
            Err(err) => return io_fail(&err),
        };
        let admin = match prompt::confirm("Make this user an administrator? (y/N): ") {
            Ok(a) => a,
            Err(err) => return io_fail(&err),
        };
        (email, name, password, admin)
    };
    if let Err(err) = POLICY.check(&password) {
        println!("❌ Password validation failed: {err}");
        return ExitCode::FAILURE;
    }
    let email = match normalize_email(&email) {
        Ok(e) => e,
        Err(err) => {
            if interactive {
                println!();
            }
            email_error(&email, &err.to_string());
            return ExitCode::FAILURE;
        }
    };
    let input = CreateUserInput {
        email,
        display_name: name,
        password,
        is_admin: admin,
    };
    let admin_proof = AdminProof::command_line();
    match users::create(
        state,
        &admin_proof,
        POLICY,
        input,
        &Origin::default(),
        chrono::Utc::now(),
    )
    .await
    {
        Ok(user) => {
            if interactive {
                println!();
            }
            println!("✅ User created successfully!");
            print_details(&user);
            ExitCode::SUCCESS
        }
        Err(err) => {
            if interactive {
                println!();
            }
            fail(&err)
        }
    }
}

async fn find(state: &AppState, email: &str) -> Result<User, ExitCode> {
    match state.store.find_user_by_email(email).await {
        Ok(Some(user)) => Ok(user),
        Ok(None) => {
            println!("❌ Error: No user found with email '{email}'");
            Err(ExitCode::FAILURE)
        }
        Err(err) => Err(fail(&err.into())),
    }
}

async fn modify(state: &AppState, args: ModArgs) -> ExitCode {
    let admin_flag = match (args.admin, args.no_admin) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    let interactive = args.email.is_none();
    let (user, input) = if let Some(email) = args.email {
        if let Some(password) = &args.password {
            if let Err(err) = POLICY.check(password) {
                println!("❌ Password validation failed: {err}");
                return ExitCode::FAILURE;
            }
        }
        let user = match find(state, &email).await {
            Ok(u) => u,
            Err(code) => return code,
        };
        if args.name.is_none() && args.password.is_none() && admin_flag.is_none() {
            println!(
                "❌ Error: No changes specified. Use --name, --password, --admin, or --no-admin"
            );
            return ExitCode::FAILURE;
        }
        let input = UpdateUserInput {
            display_name: args.name,
            password: args.password,
            is_admin: admin_flag,
            is_active: None,
        };
        (user, input)
    } else {
        match modify_interactively(state).await {
            Ok(Some(pair)) => pair,
            Ok(None) => return ExitCode::SUCCESS,
            Err(code) => return code,
        }
    };
    let role_or_password = input.password.is_some() || input.is_admin.is_some();
    let proof = AdminProof::command_line();
    match users::update(
        state,
        &proof,
        POLICY,
        &user.user_id,
        input,
        &Origin::default(),
        chrono::Utc::now(),
    )
    .await
    {
        Ok((updated, _)) => {
            if interactive {
                println!();
            }
            println!("✅ User updated successfully!");
            print_details(&updated);
            if role_or_password {
                println!("{RUNNING_SERVER_NOTE}");
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            if interactive {
                println!();
            }
            fail(&err)
        }
    }
}

/// The prompts of `invoke-usermod` without `--email`. `Ok(None)`: nothing to change.
async fn modify_interactively(
    state: &AppState,
) -> Result<Option<(User, UpdateUserInput)>, ExitCode> {
    println!("=== Modify InvokeAI User ===");
    println!();
    let email = match prompt::line("Email address of user to modify: ") {
        Ok(Some(e)) if !e.trim().is_empty() => e.trim().to_owned(),
        Ok(_) => {
            println!("Error: Email is required");
            return Err(ExitCode::FAILURE);
        }
        Err(err) => return Err(io_fail(&err)),
    };
    let user = match state.store.find_user_by_email(&email).await {
        Ok(Some(user)) => user,
        Ok(None) => {
            println!();
            println!("❌ Error: No user found with email '{email}'");
            return Err(ExitCode::FAILURE);
        }
        Err(err) => return Err(fail(&err.into())),
    };
    println!();
    println!("Current user details:");
    print_details(&user);
    println!();
    println!("--- What would you like to change? (leave blank to keep current value) ---");
    println!();
    let current_name = user
        .display_name
        .clone()
        .unwrap_or_else(|| "(not set)".to_owned());
    let name = match prompt::line(&format!("New display name [{current_name}]: ")) {
        Ok(n) => n.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()),
        Err(err) => return Err(io_fail(&err)),
    };
    let mut password = None;
    match prompt::confirm("Change password? (y/N): ") {
        Ok(true) => match ask_new_password("New password: ", "Confirm new password: ", true) {
            Ok(NewPassword::Chosen(p)) => password = Some(p),
            Ok(_) => {}
            Err(err) => return Err(io_fail(&err)),
        },
        Ok(false) => {}
        Err(err) => return Err(io_fail(&err)),
    }
    let mut is_admin = None;
    match prompt::confirm("Change admin status? (y/N): ") {
        Ok(true) => {
            let question = format!(
                "Make administrator? [current: {}] (y/N): ",
                yes_no(user.is_admin)
            );
            match prompt::confirm(&question) {
                Ok(a) => is_admin = Some(a),
                Err(err) => return Err(io_fail(&err)),
            }
        }
        Ok(false) => {}
        Err(err) => return Err(io_fail(&err)),
    }
    if name.is_none() && password.is_none() && is_admin.is_none() {
        println!();
        println!("No changes requested. User not modified.");
        return Ok(None);
    }
    let input = UpdateUserInput {
        display_name: name,
        password,
        is_admin,
        is_active: None,
    };
    Ok(Some((user, input)))
}

async fn delete(state: &AppState, args: DelArgs) -> ExitCode {
    let interactive = args.email.is_none();
    let (email, force) = match args.email {
        Some(email) => (email, args.force),
        None => {
            println!("=== Delete InvokeAI User ===");
            println!();
            match prompt::line("Email address of user to delete: ") {
                Ok(Some(e)) if !e.trim().is_empty() => (e.trim().to_owned(), false),
                Ok(_) => {
                    println!("Error: Email is required");
                    return ExitCode::FAILURE;
                }
                Err(err) => return io_fail(&err),
            }
        }
    };
    if interactive {
        println!();
    }
    let user = match find(state, &email).await {
        Ok(u) => u,
        Err(code) => return code,
    };
    if !force {
        println!("User to delete:");
        print_details(&user);
        match prompt::confirm("\n⚠️  Are you sure you want to delete this user? (yes/no): ") {
            Ok(true) => {}
            Ok(false) => {
                println!("Deletion cancelled.");
                return ExitCode::FAILURE;
            }
            Err(err) => return io_fail(&err),
        }
    }
    let proof = AdminProof::command_line();
    match users::delete(
        state,
        &proof,
        &user.user_id,
        &Origin::default(),
        chrono::Utc::now(),
    )
    .await
    {
        Ok(_) => {
            if interactive {
                println!();
            }
            println!("✅ User deleted successfully!");
            println!("{RUNNING_SERVER_NOTE}");
            ExitCode::SUCCESS
        }
        Err(err) => fail(&err),
    }
}

/// Escapes non-ASCII characters as `\\uXXXX` (Python's `ensure_ascii`); valid inside JSON
/// strings, the only place non-ASCII can occur.
fn ascii_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

fn cut(text: &str, width: usize) -> String {
    text.chars().take(width).collect()
}

async fn list(state: &AppState, args: ListArgs) -> ExitCode {
    let users = match state.store.list_users(atelier_store::USER_LIST_CAP).await {
        Ok(users) => users,
        Err(err) => {
            if args.json {
                eprintln!("{}", serde_json::json!({ "error": err.to_string() }));
            } else {
                println!("Error listing users: {err}");
            }
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        let rows: Vec<_> = users
            .iter()
            .map(|u| {
                serde_json::json!({
                    "id": u.user_id.as_str(),
                    "email": u.email,
                    "name": u.display_name,
                    "is_admin": u.is_admin,
                    "is_active": u.is_active,
                })
            })
            .collect();
        match serde_json::to_string_pretty(&rows) {
            Ok(text) => println!("{}", ascii_json(&text)),
            Err(err) => {
                eprintln!("{}", serde_json::json!({ "error": err.to_string() }));
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }
    if users.is_empty() {
        println!("No users found in database.");
        return ExitCode::SUCCESS;
    }
    println!("\n=== InvokeAI Users ===\n");
    println!(
        "{:<36} {:<30} {:<20} {:<8} {:<8}",
        "User ID", "Email", "Display Name", "Admin", "Active"
    );
    println!("{}", "-".repeat(108));
    for u in &users {
        println!(
            "{:<36} {:<30} {:<20} {:<8} {:<8}",
            u.user_id.as_str(),
            cut(&u.email, 29),
            cut(u.display_name.as_deref().unwrap_or(""), 19),
            yes_no(u.is_admin),
            yes_no(u.is_active)
        );
    }
    println!("\nTotal users: {}", users.len());
    ExitCode::SUCCESS
}

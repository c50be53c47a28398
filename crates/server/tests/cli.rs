//! The `atelier` command line as real processes (auth.md §10): the user tools' flags, prompts,
//! messages and exit codes, the audit and migrate commands, and changes made from the shell
//! while a server runs.

use crate::common::*;
use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Runs `atelier --root <root> <args>` with `stdin`; returns (exit code, stdout, stderr).
pub fn atelier(root: &Path, args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_atelier"))
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("INVOKEAI_ROOT")
        .env_remove("VIRTUAL_ENV")
        .env("RUST_LOG", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn root() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn details(email: &str, name: &str, admin: &str) -> String {
    format!("   Email: {email}\n   Display Name: {name}\n   Admin: {admin}\n   Active: Yes\n")
}

#[test]
fn useradd_non_interactive() {
    let r = root();
    let (code, out, _) = atelier(
        r.path(),
        &[
            "user",
            "add",
            "-e",
            "a@example.com",
            "-p",
            "Abcdefg1",
            "-n",
            "Ann",
            "-a",
        ],
        "",
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("✅ User created successfully!\n   User ID: "),
        "{out}"
    );
    assert!(
        out.ends_with(&details("a@example.com", "Ann", "Yes")),
        "{out}"
    );

    let (code, out, _) = atelier(r.path(), &["user", "add", "-e", "b@example.com"], "");
    assert_eq!(code, 1);
    assert_eq!(
        out,
        "❌ Error: Both --email and --password are required when using CLI mode\n   Run without arguments for interactive mode\n"
    );
    let (code, out, _) = atelier(
        r.path(),
        &["user", "add", "-e", "b@example.com", "-p", "weak"],
        "",
    );
    assert_eq!(
        (code, out.as_str()),
        (
            1,
            "❌ Password validation failed: Password must be at least 8 characters long\n"
        )
    );
    let (code, out, _) = atelier(
        r.path(),
        &["user", "add", "-e", "a@example.com", "-p", "Abcdefg1"],
        "",
    );
    assert_eq!(
        (code, out.as_str()),
        (
            1,
            "❌ Error: User with email a@example.com already exists\n"
        )
    );
    let (code, out, _) = atelier(
        r.path(),
        &["user", "add", "-e", "notanemail", "-p", "Abcdefg1"],
        "",
    );
    assert_eq!(code, 1);
    assert_eq!(
        out,
        "❌ Error: 1 validation error for UserCreateRequest\nemail\n  Invalid email address: An email address must have an @-sign. [type=value_error, input_value='notanemail', input_type=str]\n"
    );
    // Bad arguments are clap's: exit 2.
    let (code, _, err) = atelier(r.path(), &["user", "add", "--bogus"], "");
    assert_eq!(code, 2, "{err}");
}

#[test]
fn useradd_interactive_loops_until_the_password_is_right() {
    let r = root();
    let input = "i@example.com\nIvy\nweak\nAbcdefg1\nAbcdefg2\nAbcdefg1\nAbcdefg1\ny\n";
    let (code, out, _) = atelier(r.path(), &["user", "add"], input);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with(
            "=== Add InvokeAI User ===\n\nEmail address: Display name (optional): Password: "
        ),
        "{out}"
    );
    assert!(
        out.contains("Error: Password must be at least 8 characters long\n\n"),
        "{out}"
    );
    assert!(
        out.contains("Error: Passwords do not match. Please try again.\n\n"),
        "{out}"
    );
    assert!(
        out.contains("Make this user an administrator? (y/N): \n✅ User created successfully!"),
        "{out}"
    );
    assert!(
        out.ends_with(&details("i@example.com", "Ivy", "Yes")),
        "{out}"
    );
    let (code, out, _) = atelier(r.path(), &["user", "add"], "\n");
    assert_eq!(code, 1);
    assert!(out.ends_with("Error: Email is required\n"), "{out}");
}

#[test]
fn userlist_table_and_json() {
    let r = root();
    atelier(
        r.path(),
        &[
            "user",
            "add",
            "-e",
            "zoe@example.com",
            "-p",
            "Abcdefg1",
            "-n",
            "Zoë",
        ],
        "",
    );
    let long = "a.very.long.email.address.for@example.com";
    atelier(
        r.path(),
        &[
            "user",
            "add",
            "-e",
            long,
            "-p",
            "Abcdefg1",
            "-n",
            "A Very Long Display Name",
        ],
        "",
    );
    let (code, out, _) = atelier(r.path(), &["user", "list"], "");
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..3], ["", "=== InvokeAI Users ===", ""]);
    assert_eq!(
        lines[3],
        format!(
            "{:<36} {:<30} {:<20} {:<8} {:<8}",
            "User ID", "Email", "Display Name", "Admin", "Active"
        )
    );
    assert_eq!(lines[3].len(), 106);
    assert_eq!(lines[4], "-".repeat(108));
    assert!(
        lines[5].contains("a.very.long.email.address.for ")
            && lines[5].contains("A Very Long Display "),
        "{}",
        lines[5]
    );
    assert!(
        lines.iter().any(|l| l.starts_with("system ")),
        "the CLI lists the system user"
    );
    assert_eq!(lines.last(), Some(&"Total users: 3"));

    let (code, out, _) = atelier(r.path(), &["user", "list", "--json"], "");
    assert_eq!(code, 0);
    assert!(
        out.contains("\"name\": \"Zo\\u00eb\""),
        "non-ASCII is escaped: {out}"
    );
    let users: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(users.as_array().unwrap().len(), 3);
    let keys: Vec<&str> = users[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["id", "email", "name", "is_admin", "is_active"]);
}

#[test]
fn usermod_and_userdel() {
    let r = root();
    atelier(
        r.path(),
        &["user", "add", "-e", "a@example.com", "-p", "Abcdefg1", "-a"],
        "",
    );
    atelier(
        r.path(),
        &["user", "add", "-e", "u@example.com", "-p", "Abcdefg1"],
        "",
    );
    let (code, out, _) = atelier(
        r.path(),
        &["user", "mod", "-e", "u@example.com", "-n", "Una", "--admin"],
        "",
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("✅ User updated successfully!"), "{out}");
    assert!(
        out.contains(&details("u@example.com", "Una", "Yes")),
        "{out}"
    );
    assert!(out.ends_with(
        "   ℹ️  A running server applies this to new requests immediately; already-open\n      connections are re-checked within about a minute.\n"
    ), "{out}");
    let (code, out, _) = atelier(
        r.path(),
        &["user", "mod", "-e", "u@example.com", "-n", "Una B"],
        "",
    );
    assert_eq!(code, 0);
    assert!(!out.contains("ℹ️"), "a rename needs no note: {out}");
    let (code, out, _) = atelier(
        r.path(),
        &["user", "mod", "-e", "nobody@example.com", "-n", "x"],
        "",
    );
    assert_eq!(
        (code, out.as_str()),
        (
            1,
            "❌ Error: No user found with email 'nobody@example.com'\n"
        )
    );
    let (code, out, _) = atelier(r.path(), &["user", "mod", "-e", "u@example.com"], "");
    assert_eq!(
        (code, out.as_str()),
        (
            1,
            "❌ Error: No changes specified. Use --name, --password, --admin, or --no-admin\n"
        )
    );
    let (code, _, _) = atelier(
        r.path(),
        &[
            "user",
            "mod",
            "-e",
            "u@example.com",
            "--admin",
            "--no-admin",
        ],
        "",
    );
    assert_eq!(code, 2);
    let (code, out, _) = atelier(
        r.path(),
        &["user", "mod", "-e", "u@example.com", "-p", "weak"],
        "",
    );
    assert_eq!(
        (code, out.as_str()),
        (
            1,
            "❌ Password validation failed: Password must be at least 8 characters long\n"
        )
    );
    let (code, out, _) = atelier(
        r.path(),
        &["user", "mod", "-e", "system@system.invokeai", "-a"],
        "",
    );
    assert_eq!(code, 1);
    assert_eq!(out, "❌ Error: The system user cannot be deleted, deactivated, promoted to administrator, or given a password\n");

    // Deletion: refused for the last admin, confirmed or cancelled otherwise.
    atelier(
        r.path(),
        &["user", "mod", "-e", "u@example.com", "--no-admin"],
        "",
    );
    let (code, out, _) = atelier(r.path(), &["user", "del", "-e", "a@example.com", "-f"], "");
    assert_eq!(
        (code, out.as_str()),
        (1, "❌ Error: Cannot remove the last administrator\n")
    );
    let (code, out, _) = atelier(r.path(), &["user", "del", "-e", "u@example.com"], "no\n");
    assert_eq!(code, 1);
    assert!(out.starts_with("User to delete:\n   User ID: "), "{out}");
    assert!(
        out.ends_with(
            "\n⚠️  Are you sure you want to delete this user? (yes/no): Deletion cancelled.\n"
        ),
        "{out}"
    );
    let (code, out, _) = atelier(r.path(), &["user", "del", "-e", "u@example.com"], "yes\n");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("✅ User deleted successfully!\n   ℹ️  "),
        "{out}"
    );
    let (code, out, _) = atelier(r.path(), &["user", "del", "-e", "u@example.com", "-f"], "");
    assert_eq!(
        (code, out.as_str()),
        (1, "❌ Error: No user found with email 'u@example.com'\n")
    );
}

#[test]
fn usermod_interactive() {
    let r = root();
    atelier(
        r.path(),
        &["user", "add", "-e", "u@example.com", "-p", "Abcdefg1"],
        "",
    );
    let (code, out, _) = atelier(r.path(), &["user", "mod"], "u@example.com\n\nn\nn\n");
    assert_eq!(code, 0);
    assert!(out.contains("New display name [(not set)]: "), "{out}");
    assert!(
        out.ends_with("\nNo changes requested. User not modified.\n"),
        "{out}"
    );
    let (code, out, _) = atelier(
        r.path(),
        &["user", "mod"],
        "u@example.com\nUma\ny\nNewpass12\nNewpass12\ny\ny\n",
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("Make administrator? [current: No] (y/N): "),
        "{out}"
    );
    assert!(
        out.contains(&details("u@example.com", "Uma", "Yes")),
        "{out}"
    );
}

#[tokio::test]
async fn shell_changes_reach_a_running_server_and_the_audit_log() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    s.create_user(&admin, "u@example.com", "User-Pass-1", false)
        .await;
    let token = s.login("u@example.com", "User-Pass-1").await;
    let root = s.root.path().to_owned();
    let (code, out, _) = tokio::task::spawn_blocking(move || {
        atelier(
            &root,
            &["user", "mod", "-e", "u@example.com", "-p", "Changed-Pass-2"],
            "",
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}");
    // The password change bumped the epoch: the running server refuses the old token at once.
    s.get("/api/v1/auth/me", Some(&token))
        .await
        .assert_detail(401, "User account is inactive or does not exist");
    s.login("u@example.com", "Changed-Pass-2").await;

    let root = s.root.path().to_owned();
    let (code, out, _) = tokio::task::spawn_blocking(move || {
        atelier(
            &root,
            &["audit", "--json", "--action", "password_reset"],
            "",
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}");
    let log: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(log["total"], 1);
    assert_eq!(log["items"][0]["actor_email"], "cli");
    assert_eq!(log["items"][0]["subject_email"], "u@example.com");
    let r = s
        .get("/api/v1/auth/audit?action=password_reset", Some(&admin))
        .await;
    assert_eq!(r.body["total"], 1);
    let root = s.root.path().to_owned();
    let (code, _, err) =
        tokio::task::spawn_blocking(move || atelier(&root, &["audit", "--action", "nope"], ""))
            .await
            .unwrap();
    assert_eq!(code, 1);
    assert!(err.contains("unknown action 'nope'"), "{err}");
}

#[tokio::test]
async fn migrate_reports_and_a_newer_schema_is_refused() {
    let r = root();
    let (code, out, _) = atelier(r.path(), &["migrate"], "");
    assert_eq!(code, 0);
    let known = atelier_store::Store::known_schema_version();
    assert!(
        out.contains(&format!("is at schema version {known}")),
        "{out}"
    );
    // Mark the database as migrated by a future Atelier.
    let url = format!(
        "sqlite://{}",
        r.path().join("databases/atelier.db").display()
    );
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("INSERT INTO atelier_schema_migrations VALUES (999, 'future', 'x')")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let (code, _, err) = atelier(r.path(), &["migrate"], "");
    assert_eq!(code, 1);
    assert!(err.contains("newer than this binary knows"), "{err}");
    let (code, _, err) = atelier(r.path(), &["serve", "--port", "0"], "");
    assert_eq!(code, 1);
    assert!(err.contains("newer than this binary knows"), "{err}");
}

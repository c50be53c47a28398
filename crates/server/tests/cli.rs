//! The `atelier` command line as real processes (auth.md §10): the user tools' flags, prompts,
//! messages and exit codes, the audit and migrate commands, and changes made from the shell
//! while a server runs. Expected texts are the reference's (notes/invokeai-auth.md §4).

use crate::common::*;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Runs `atelier [--root <root>] <args>` in a scrubbed environment (no `INVOKEAI_*`, no
/// `VIRTUAL_ENV`, `HOME` pointing at `home`) plus `env`, feeding `stdin` through a pipe.
/// Returns (exit code, stdout, stderr).
fn run_cli(
    root: Option<&Path>,
    home: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &str,
) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_atelier"));
    if let Some(root) = root {
        cmd.arg("--root").arg(root);
    }
    cmd.args(args).env_clear().env("HOME", home);
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .env("RUST_LOG", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A process that fails before reading its input closes the pipe; that is not our failure.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `atelier --root <root> <args>` with `stdin`; returns (exit code, stdout, stderr).
pub fn atelier(root: &Path, args: &[&str], stdin: &str) -> (i32, String, String) {
    run_cli(Some(root), &root.join("no-home"), args, &[], stdin)
}

/// [`atelier`] from async code, off the runtime's threads (a test server may be running on it).
async fn atelier_async(root: &Path, args: &[&str]) -> (i32, String, String) {
    let root: PathBuf = root.to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        atelier(&root, &args, "")
    })
    .await
    .unwrap()
}

fn root() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// The five-line user block minus its `User ID` line.
fn details(email: &str, name: &str, admin: &str) -> String {
    format!("   Email: {email}\n   Display Name: {name}\n   Admin: {admin}\n   Active: Yes\n")
}

const NOTE: &str = "   ℹ️  A running server applies this to new requests immediately; already-open\n      connections are re-checked within about a minute.\n";

fn add(root: &Path, email: &str, password: &str, extra: &[&str]) {
    let mut args = vec!["user", "add", "-e", email, "-p", password];
    args.extend_from_slice(extra);
    let (code, out, err) = atelier(root, &args, "");
    assert_eq!(code, 0, "{out}{err}");
}

/// The user id printed on the `   User ID: ` line.
fn printed_id(out: &str) -> &str {
    out.lines()
        .find_map(|l| l.strip_prefix("   User ID: "))
        .unwrap()
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
    let id = printed_id(&out);
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert_eq!(
        out,
        format!(
            "✅ User created successfully!\n   User ID: {id}\n{}",
            details("a@example.com", "Ann", "Yes")
        )
    );
    // Without --name the name is "(not set)"; the domain is normalised, the local part kept.
    let (code, out, _) = atelier(
        r.path(),
        &["user", "add", "-e", "Bob@Example.COM", "-p", "Abcdefg1"],
        "",
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.ends_with(&details("Bob@example.com", "(not set)", "No")),
        "{out}"
    );

    for args in [
        &["user", "add", "-e", "b@example.com"][..],
        &["user", "add", "-p", "Abcdefg1", "-n", "B"][..],
    ] {
        let (code, out, _) = atelier(r.path(), args, "");
        assert_eq!(code, 1);
        assert_eq!(
            out,
            "❌ Error: Both --email and --password are required when using CLI mode\n   Run without arguments for interactive mode\n"
        );
    }
    // The CLI is always strict, whatever the server's setting.
    for (password, message) in [
        ("weak", "Password must be at least 8 characters long"),
        (
            "alllowercase1",
            "Password must contain uppercase, lowercase, and numbers",
        ),
    ] {
        let (code, out, _) = atelier(
            r.path(),
            &["user", "add", "-e", "b@example.com", "-p", password],
            "",
        );
        assert_eq!(
            (code, out),
            (1, format!("❌ Password validation failed: {message}\n"))
        );
    }
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
    // Nothing but the two good users (and `system`) was written.
    let (_, out, _) = atelier(r.path(), &["user", "list", "--json"], "");
    let users: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(users.as_array().unwrap().len(), 3, "{out}");
}

#[test]
fn useradd_interactive_loops_until_the_password_is_right() {
    let r = root();
    // A weak password, then a mismatching confirmation, then a good pair, then "y".
    let input = "i@example.com\nIvy\nweak\nAbcdefg1\nAbcdefg2\nAbcdefg1\nAbcdefg1\ny\n";
    let (code, out, _) = atelier(r.path(), &["user", "add"], input);
    assert_eq!(code, 0, "{out}");
    let id = printed_id(&out).to_owned();
    assert_eq!(
        out,
        format!(
            "=== Add InvokeAI User ===\n\n\
             Email address: Display name (optional): \
             Password: Error: Password must be at least 8 characters long\n\n\
             Password: Confirm password: Error: Passwords do not match. Please try again.\n\n\
             Password: Confirm password: \
             Make this user an administrator? (y/N): \n\
             ✅ User created successfully!\n   User ID: {id}\n{}",
            details("i@example.com", "Ivy", "Yes")
        )
    );
    // No name and a plain Enter at the admin question: a regular user without a name.
    let (code, out, _) = atelier(
        r.path(),
        &["user", "add"],
        "j@example.com\n\nAbcdefg1\nAbcdefg1\n\n",
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.ends_with(&details("j@example.com", "(not set)", "No")),
        "{out}"
    );
    let (code, out, _) = atelier(r.path(), &["user", "add"], "\n");
    assert_eq!(code, 1);
    assert_eq!(
        out,
        "=== Add InvokeAI User ===\n\nEmail address: Error: Email is required\n"
    );
    // --name and --admin alone do not leave interactive mode.
    let (code, out, _) = atelier(r.path(), &["user", "add", "-n", "Kim", "-a"], "\n");
    assert_eq!(code, 1);
    assert!(out.starts_with("=== Add InvokeAI User ===\n"), "{out}");
    // A duplicate found only at the end is reported after a blank line.
    let (code, out, _) = atelier(
        r.path(),
        &["user", "add"],
        "i@example.com\n\nAbcdefg1\nAbcdefg1\nn\n",
    );
    assert_eq!(code, 1);
    assert!(
        out.ends_with("(y/N): \n❌ Error: User with email i@example.com already exists\n"),
        "{out}"
    );
}

#[test]
fn userlist_table_and_json() {
    let r = root();
    add(r.path(), "zoe@example.com", "Abcdefg1", &["-n", "Zoë"]);
    let long = "a.very.long.email.address.for@example.com";
    add(
        r.path(),
        long,
        "Abcdefg1",
        &["-n", "A Very Long Display Name", "-a"],
    );
    let (code, out, _) = atelier(r.path(), &["user", "list"], "");
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.split('\n').collect();
    assert_eq!(lines[..3], ["", "=== InvokeAI Users ===", ""]);
    assert_eq!(
        lines[3],
        "User ID                              Email                          Display Name         Admin    Active  "
    );
    assert_eq!(lines[3].len(), 106);
    assert_eq!(lines[4], "-".repeat(108));
    // Newest first; cut to 29 and 19 characters, padded, trailing spaces kept.
    let row = |id: &str, email: &str, name: &str, admin: &str| {
        format!("{id:<36} {email:<30} {name:<20} {admin:<8} {:<8}", "Yes")
    };
    let first_id = &lines[5][..36];
    assert_eq!(
        lines[5],
        row(
            first_id,
            "a.very.long.email.address.for",
            "A Very Long Display",
            "Yes"
        )
    );
    let second_id = &lines[6][..36];
    assert_eq!(lines[6], row(second_id, "zoe@example.com", "Zoë", "No"));
    assert_eq!(
        lines[7],
        row("system", "system@system.invokeai", "System", "No")
    );
    assert_eq!(lines[8..], ["", "Total users: 3", ""]);

    let (code, out, _) = atelier(r.path(), &["user", "list", "--json"], "");
    assert_eq!(code, 0);
    assert!(out.is_ascii(), "non-ASCII is escaped: {out}");
    assert!(out.contains("\"name\": \"Zo\\u00eb\""), "{out}");
    // json.dumps(indent=2): two-space indentation, one key per line.
    assert!(
        out.starts_with(&format!(
            "[\n  {{\n    \"id\": \"{first_id}\",\n    \"email\": \"{long}\",\n"
        )),
        "{out}"
    );
    let users: Value = serde_json::from_str(&out).unwrap();
    let users = users.as_array().unwrap();
    assert_eq!(users.len(), 3);
    for user in users {
        let keys: Vec<&str> = user
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["id", "email", "name", "is_admin", "is_active"]);
    }
    assert_eq!(
        users[2],
        serde_json::json!({"id": "system", "email": "system@system.invokeai", "name": "System", "is_admin": false, "is_active": true})
    );
    assert_eq!(users[1]["id"], second_id);
    assert_eq!(users[0]["is_admin"], true);

    // A user without a name: an empty column in the table, null in JSON.
    add(r.path(), "nameless@example.com", "Abcdefg1", &[]);
    let (_, out, _) = atelier(r.path(), &["user", "list"], "");
    let row5 = out.split('\n').nth(5).unwrap();
    assert_eq!(
        &row5[36..],
        format!(
            " {:<30} {:<20} {:<8} {:<8}",
            "nameless@example.com", "", "No", "Yes"
        )
    );
    let (_, out, _) = atelier(r.path(), &["user", "list", "--json"], "");
    let users: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(users[0]["name"], Value::Null);
}

#[test]
fn usermod_and_userdel() {
    let r = root();
    add(r.path(), "a@example.com", "Abcdefg1", &["-a"]);
    add(r.path(), "u@example.com", "Abcdefg1", &[]);
    let (code, out, _) = atelier(
        r.path(),
        &["user", "mod", "-e", "u@example.com", "-n", "Una", "--admin"],
        "",
    );
    assert_eq!(code, 0, "{out}");
    let id = printed_id(&out).to_owned();
    assert_eq!(
        out,
        format!(
            "✅ User updated successfully!\n   User ID: {id}\n{}{NOTE}",
            details("u@example.com", "Una", "Yes")
        )
    );
    let (code, out, _) = atelier(
        r.path(),
        &["user", "mod", "-e", "u@example.com", "-n", "Una B"],
        "",
    );
    assert_eq!(code, 0);
    assert_eq!(
        out,
        format!(
            "✅ User updated successfully!\n   User ID: {id}\n{}",
            details("u@example.com", "Una B", "Yes")
        ),
        "a rename needs no note"
    );
    let (code, out, _) = atelier(
        r.path(),
        &["user", "mod", "-e", "u@example.com", "-p", "Newpass12"],
        "",
    );
    assert_eq!(code, 0);
    assert!(
        out.ends_with(NOTE),
        "a password change gets the note: {out}"
    );
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
    // The lookup is exact: no normalisation of --email.
    let (code, out, _) = atelier(
        r.path(),
        &["user", "mod", "-e", "U@example.com", "-n", "x"],
        "",
    );
    assert_eq!(
        (code, out.as_str()),
        (1, "❌ Error: No user found with email 'U@example.com'\n")
    );
    let (code, out, _) = atelier(r.path(), &["user", "mod", "-e", "u@example.com"], "");
    assert_eq!(
        (code, out.as_str()),
        (
            1,
            "❌ Error: No changes specified. Use --name, --password, --admin, or --no-admin\n"
        )
    );
    let (code, out, err) = atelier(
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
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(err.contains("cannot be used with"), "{err}");
    // The policy is checked before the lookup.
    let (code, out, _) = atelier(
        r.path(),
        &["user", "mod", "-e", "nobody@example.com", "-p", "weak"],
        "",
    );
    assert_eq!(
        (code, out.as_str()),
        (
            1,
            "❌ Password validation failed: Password must be at least 8 characters long\n"
        )
    );
    let system_refusal = "❌ Error: The system user cannot be deleted, deactivated, promoted to administrator, or given a password\n";
    for args in [
        &["user", "mod", "-e", "system@system.invokeai", "-a"][..],
        &[
            "user",
            "mod",
            "-e",
            "system@system.invokeai",
            "-p",
            "Abcdefg1",
        ][..],
        &["user", "del", "-e", "system@system.invokeai", "-f"][..],
    ] {
        let (code, out, _) = atelier(r.path(), args, "");
        assert_eq!((code, out.as_str()), (1, system_refusal), "{args:?}");
    }
    // Renaming the system user is allowed.
    let (code, _, _) = atelier(
        r.path(),
        &[
            "user",
            "mod",
            "-e",
            "system@system.invokeai",
            "-n",
            "Legacy",
        ],
        "",
    );
    assert_eq!(code, 0);

    // The last administrator can be neither demoted nor deleted.
    let (code, _, _) = atelier(
        r.path(),
        &["user", "mod", "-e", "u@example.com", "--no-admin"],
        "",
    );
    assert_eq!(code, 0);
    let (code, out, _) = atelier(
        r.path(),
        &["user", "mod", "-e", "a@example.com", "--no-admin"],
        "",
    );
    assert_eq!(
        (code, out.as_str()),
        (1, "❌ Error: Cannot remove the last administrator\n")
    );
    let (code, out, _) = atelier(r.path(), &["user", "del", "-e", "a@example.com", "-f"], "");
    assert_eq!(
        (code, out.as_str()),
        (1, "❌ Error: Cannot remove the last administrator\n")
    );
    // Renaming and re-passwording the last admin is fine.
    let (code, _, _) = atelier(
        r.path(),
        &[
            "user",
            "mod",
            "-e",
            "a@example.com",
            "-n",
            "Boss",
            "-p",
            "Newpass12",
        ],
        "",
    );
    assert_eq!(code, 0);

    // Deletion: confirmed or cancelled.
    let (code, out, _) = atelier(r.path(), &["user", "del", "-e", "u@example.com"], "no\n");
    assert_eq!(code, 1);
    assert_eq!(
        out,
        format!(
            "User to delete:\n   User ID: {id}\n{}\n⚠️  Are you sure you want to delete this user? (yes/no): Deletion cancelled.\n",
            details("u@example.com", "Una B", "No")
        )
    );
    let (code, out, _) = atelier(r.path(), &["user", "del", "-e", "u@example.com"], "");
    assert_eq!(code, 1, "end of input cancels: {out}");
    assert!(out.ends_with("Deletion cancelled.\n"), "{out}");
    let (code, out, _) = atelier(r.path(), &["user", "del", "-e", "u@example.com"], "yes\n");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.ends_with(&format!("(yes/no): ✅ User deleted successfully!\n{NOTE}")),
        "{out}"
    );
    let (code, out, _) = atelier(r.path(), &["user", "del", "-e", "u@example.com", "-f"], "");
    assert_eq!(
        (code, out.as_str()),
        (1, "❌ Error: No user found with email 'u@example.com'\n")
    );
    add(r.path(), "f@example.com", "Abcdefg1", &[]);
    let (code, out, _) = atelier(r.path(), &["user", "del", "-e", "f@example.com", "-f"], "");
    assert_eq!(
        (code, out),
        (0, format!("✅ User deleted successfully!\n{NOTE}"))
    );
    let (_, out, _) = atelier(r.path(), &["user", "list", "--json"], "");
    let users: Value = serde_json::from_str(&out).unwrap();
    let emails: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails, ["a@example.com", "system@system.invokeai"]);
}

#[test]
fn usermod_interactive() {
    let r = root();
    add(r.path(), "u@example.com", "Abcdefg1", &[]);
    let (code, out, _) = atelier(r.path(), &["user", "mod"], "u@example.com\n\nn\nn\n");
    assert_eq!(code, 0);
    let id = printed_id(&out).to_owned();
    assert_eq!(
        out,
        format!(
            "=== Modify InvokeAI User ===\n\n\
             Email address of user to modify: \n\
             Current user details:\n   User ID: {id}\n{}\n\
             --- What would you like to change? (leave blank to keep current value) ---\n\n\
             New display name [(not set)]: Change password? (y/N): Change admin status? (y/N): \n\
             No changes requested. User not modified.\n",
            details("u@example.com", "(not set)", "No")
        )
    );
    // A weak and a mismatching password are asked again; then promote.
    let (code, out, _) = atelier(
        r.path(),
        &["user", "mod"],
        "u@example.com\nUma\ny\nweak\nNewpass12\nNewpass13\nNewpass12\nNewpass12\ny\ny\n",
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(
            "New display name [(not set)]: Change password? (y/N): \
             New password: Error: Password must be at least 8 characters long\n\n\
             New password: Confirm new password: Error: Passwords do not match. Please try again.\n\n\
             New password: Confirm new password: \
             Change admin status? (y/N): Make administrator? [current: No] (y/N): \n\
             ✅ User updated successfully!\n"
        ),
        "{out}"
    );
    assert!(
        out.ends_with(&format!("{}{NOTE}", details("u@example.com", "Uma", "Yes"))),
        "{out}"
    );
    // A blank new password keeps the old one.
    let (code, out, _) = atelier(r.path(), &["user", "mod"], "u@example.com\n\ny\n\nn\n");
    assert_eq!(code, 0);
    assert!(
        out.contains("New display name [Uma]: Change password? (y/N): New password: Keeping existing password.\nChange admin status? (y/N): \nNo changes requested. User not modified.\n"),
        "{out}"
    );
    let (code, out, _) = atelier(r.path(), &["user", "mod"], "nobody@example.com\n");
    assert_eq!(code, 1);
    assert!(
        out.ends_with(
            "Email address of user to modify: \n❌ Error: No user found with email 'nobody@example.com'\n"
        ),
        "{out}"
    );
}

#[test]
fn userdel_interactive() {
    let r = root();
    add(r.path(), "a@example.com", "Abcdefg1", &["-a"]);
    add(r.path(), "u@example.com", "Abcdefg1", &["-n", "Una"]);
    // --force is ignored without --email: the confirmation is still asked.
    let (code, out, _) = atelier(r.path(), &["user", "del", "-f"], "u@example.com\nn\n");
    assert_eq!(code, 1);
    let id = printed_id(&out).to_owned();
    assert_eq!(
        out,
        format!(
            "=== Delete InvokeAI User ===\n\n\
             Email address of user to delete: \n\
             User to delete:\n   User ID: {id}\n{}\n\
             ⚠️  Are you sure you want to delete this user? (yes/no): Deletion cancelled.\n",
            details("u@example.com", "Una", "No")
        )
    );
    let (code, out, _) = atelier(r.path(), &["user", "del"], "u@example.com\nY\n");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.ends_with(&format!(
            "(yes/no): \n✅ User deleted successfully!\n{NOTE}"
        )),
        "{out}"
    );
    let (code, out, _) = atelier(r.path(), &["user", "del"], "u@example.com\n");
    assert_eq!(code, 1);
    assert!(
        out.ends_with(
            "Email address of user to delete: \n❌ Error: No user found with email 'u@example.com'\n"
        ),
        "{out}"
    );
}

#[test]
fn the_cli_finds_the_root_and_database_like_the_server() {
    let base = root();
    let b = base.path();
    let exists = |p: PathBuf| assert!(p.join("databases/atelier.db").is_file(), "{p:?}");
    let list = |root: Option<&Path>, env: &[(&str, &str)]| {
        let (code, out, err) = run_cli(root, &b.join("home"), &["user", "list", "--json"], env, "");
        assert_eq!(code, 0, "{out}{err}");
    };
    // --root, its short form, INVOKEAI_ROOT (empty is ignored), the virtualenv's parent, ~.
    list(Some(&b.join("flag")), &[]);
    exists(b.join("flag"));
    let short = b.join("short").display().to_string();
    let (code, _, _) = run_cli(
        None,
        &b.join("home"),
        &["user", "list", "-r", &short],
        &[],
        "",
    );
    assert_eq!(code, 0);
    exists(b.join("short"));
    let env_root = b.join("env").display().to_string();
    list(Some(&b.join("flag")), &[("INVOKEAI_ROOT", &env_root)]);
    assert!(!b.join("env").exists(), "--root beats INVOKEAI_ROOT");
    list(None, &[("INVOKEAI_ROOT", &env_root)]);
    exists(b.join("env"));
    let venv = b.join("project/.venv").display().to_string();
    list(None, &[("INVOKEAI_ROOT", ""), ("VIRTUAL_ENV", &venv)]);
    exists(b.join("project"));
    list(None, &[]);
    exists(b.join("home/invokeai"));

    // db_dir from the file (a superset of the reference) and INVOKEAI_DB_DIR over it.
    let r = b.join("dbdir");
    std::fs::create_dir_all(&r).unwrap();
    std::fs::write(
        r.join("invokeai.yaml"),
        "schema_version: 4.0.3\ndb_dir: filedb\n",
    )
    .unwrap();
    add(&r, "file@example.com", "Abcdefg1", &[]);
    assert!(r.join("filedb/atelier.db").is_file());
    let (code, out, err) = run_cli(
        Some(&r),
        &b.join("home"),
        &["user", "add", "-e", "env@example.com", "-p", "Abcdefg1"],
        &[("INVOKEAI_DB_DIR", "envdb")],
        "",
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(r.join("envdb/atelier.db").is_file());
    let (_, out, _) = atelier(&r, &["user", "list"], "");
    assert!(
        out.contains("file@example.com") && !out.contains("env@example.com"),
        "{out}"
    );
}

#[tokio::test]
async fn shell_changes_reach_a_running_server_and_the_audit_log() {
    // Users made at the shell before the server ever ran.
    let r = root();
    let (code, out, _) = atelier_async(
        r.path(),
        &[
            "user",
            "add",
            "-e",
            ADMIN_EMAIL,
            "-p",
            ADMIN_PASSWORD,
            "-n",
            "Admin",
            "-a",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = atelier_async(
        r.path(),
        &["user", "add", "-e", "u@example.com", "-p", "User-Pass-1"],
    )
    .await;
    assert_eq!(code, 0, "{out}");

    let s = TestServer::builder_at(r).multiuser(true).start().await;
    let root = s.root.path().to_owned();
    let status = s.get("/api/v1/auth/status", None).await;
    assert_eq!(status.body["setup_required"], false, "{}", status.text);
    let admin = s.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let token = s.login("u@example.com", "User-Pass-1").await;
    assert_eq!(s.get("/api/v1/auth/me", Some(&token)).await.status, 200);

    // A password change at the shell bumps the epoch: the running server refuses the old
    // token on its next request; the admin's token is untouched.
    let (code, out, _) = atelier_async(
        &root,
        &["user", "mod", "-e", "u@example.com", "-p", "Changed-Pass-2"],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    s.get("/api/v1/auth/me", Some(&token))
        .await
        .assert_detail(401, "User account is inactive or does not exist");
    assert_eq!(s.get("/api/v1/auth/me", Some(&admin)).await.status, 200);
    let r = s
        .post(
            "/api/v1/auth/login",
            None,
            &serde_json::json!({"email": "u@example.com", "password": "User-Pass-1"}),
        )
        .await;
    assert_eq!(r.status, 401, "the old password is gone: {}", r.text);
    let token = s.login("u@example.com", "Changed-Pass-2").await;

    // A promotion applies on the next request without a new token (and revokes nothing).
    s.get("/api/v1/auth/users", Some(&token))
        .await
        .assert_detail(403, "Admin privileges required");
    let (code, out, _) = atelier_async(&root, &["user", "mod", "-e", "u@example.com", "-a"]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(s.get("/api/v1/auth/users", Some(&token)).await.status, 200);
    let (code, _, _) =
        atelier_async(&root, &["user", "mod", "-e", "u@example.com", "--no-admin"]).await;
    assert_eq!(code, 0);
    s.get("/api/v1/auth/users", Some(&token))
        .await
        .assert_detail(403, "Admin privileges required");

    // A deletion at the shell ends the session.
    let (code, out, _) = atelier_async(&root, &["user", "del", "-e", "u@example.com", "-f"]).await;
    assert_eq!(code, 0, "{out}");
    s.get("/api/v1/auth/me", Some(&token))
        .await
        .assert_detail(401, "User account is inactive or does not exist");

    // The audit log from the shell: the CLI is the actor.
    let (code, out, _) =
        atelier_async(&root, &["audit", "--json", "--action", "user_created"]).await;
    assert_eq!(code, 0, "{out}");
    let log: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(log["total"], 2, "{out}");
    let subjects: Vec<&str> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            assert_eq!(i["action"], "user_created");
            assert_eq!(i["actor_email"], "cli");
            i["subject_email"].as_str().unwrap()
        })
        .collect();
    assert_eq!(subjects, ["u@example.com", ADMIN_EMAIL], "newest first");
    for (action, total) in [
        ("password_reset", 1),
        ("user_promoted", 1),
        ("user_demoted", 1),
        ("user_deleted", 1),
    ] {
        let (code, out, _) = atelier_async(&root, &["audit", "--json", "--action", action]).await;
        assert_eq!(code, 0, "{out}");
        let log: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(log["total"], total, "{action}: {out}");
        assert_eq!(log["items"][0]["actor_email"], "cli", "{action}");
        assert_eq!(
            log["items"][0]["subject_email"], "u@example.com",
            "{action}"
        );
    }
    // The server reads the same log.
    let r = s
        .get("/api/v1/auth/audit?action=password_reset", Some(&admin))
        .await;
    assert_eq!(r.body["total"], 1, "{}", r.text);
    let (code, out, _) = atelier_async(&root, &["audit", "--limit", "1"]).await;
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("Time (UTC)") && lines[1].contains("user_deleted"),
        "{out}"
    );
    assert!(lines.last().unwrap().starts_with("Showing 1 of "), "{out}");
    let (code, out, err) = atelier_async(&root, &["audit", "--action", "nope"]).await;
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(
        err.starts_with("❌ Error: unknown action 'nope' (one of: login_succeeded, "),
        "{err}"
    );
}

#[tokio::test]
async fn migrate_reports_and_a_newer_schema_is_refused() {
    let r = root();
    let (code, out, _) = atelier(r.path(), &["migrate"], "");
    assert_eq!(code, 0);
    let known = atelier_store::Store::known_schema_version();
    let db = r
        .path()
        .canonicalize()
        .unwrap()
        .join("databases/atelier.db");
    assert_eq!(
        out,
        format!("Database {} is at schema version {known}\n", db.display())
    );
    // Running it again changes nothing.
    let (code, again, _) = atelier(r.path(), &["migrate"], "");
    assert_eq!((code, again), (0, out));

    // Mark the database as migrated by a future Atelier.
    let url = format!("sqlite://{}", db.display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("INSERT INTO atelier_schema_migrations VALUES (999, 'future', 'x')")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let newer = "the database schema is at version 999, newer than this binary knows";
    let (code, _, err) = atelier(r.path(), &["migrate"], "");
    assert_eq!(code, 1);
    assert!(err.contains(newer), "{err}");
    let (code, _, err) = atelier(r.path(), &["serve", "--port", "0"], "");
    assert_eq!(code, 1);
    assert!(err.contains(newer), "{err}");
    // The user tools refuse it too: JSON errors on stderr, table errors as the reference's.
    let (code, out, err) = atelier(r.path(), &["user", "list", "--json"], "");
    assert_eq!((code, out.as_str()), (1, ""));
    let error: Value = serde_json::from_str(&err).unwrap();
    assert!(error["error"].as_str().unwrap().contains(newer), "{err}");
    let (code, out, _) = atelier(r.path(), &["user", "list"], "");
    assert_eq!(code, 1);
    assert!(out.starts_with("Error listing users: "), "{out}");
    let (code, out, _) = atelier(
        r.path(),
        &["user", "add", "-e", "x@example.com", "-p", "Abcdefg1"],
        "",
    );
    assert_eq!(code, 1);
    assert!(out.starts_with("❌ Unexpected error: "), "{out}");
}

//! Configuration as the real binary reads it (config.md): the file, `INVOKEAI_*` variables and
//! flags in order of precedence, root resolution, file creation and migration, refusals that
//! name the key, warnings for known-but-unused keys, and the busy-port fallback.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running `atelier serve`, killed when dropped.
struct Served {
    child: Child,
    port: u16,
    log: Vec<String>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn base_command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_atelier"));
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.to_ascii_uppercase().starts_with("INVOKEAI_") || k == "VIRTUAL_ENV" {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Starts the server and waits (up to 20 s) for its "listening on" line.
fn serve(args: &[&str], env: &[(&str, &str)]) -> Result<Served, (i32, String)> {
    let mut child = base_command(args, env)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut log = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap();
                    let port = addr.rsplit(':').next().unwrap().parse().unwrap();
                    log.push(line);
                    return Ok(Served { child, port, log });
                }
                log.push(line);
            }
            Err(_) => {
                let code = child.wait().ok().and_then(|s| s.code()).unwrap_or(-1);
                return Err((code, log.join("\n")));
            }
        }
    }
}

fn status(port: u16) -> serde_json::Value {
    let out = Command::new("curl")
        .args(["-s", &format!("http://127.0.0.1:{port}/api/v1/auth/status")])
        .output();
    match out {
        Ok(o) if o.status.success() => serde_json::from_slice(&o.stdout).unwrap(),
        _ => status_without_curl(port),
    }
}

/// A minimal HTTP/1.0 GET, for machines without curl.
fn status_without_curl(port: u16) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"GET /api/v1/auth/status HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_config(root: &Path, text: &str) {
    std::fs::write(root.join("invokeai.yaml"), text).unwrap();
}

fn root_arg(root: &Path) -> String {
    root.display().to_string()
}

#[test]
fn precedence_is_flags_then_environment_then_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = root_arg(dir.path());
    let (file_port, env_port, flag_port) = (free_port(), free_port(), free_port());
    write_config(
        dir.path(),
        &format!("schema_version: 4.0.3\nport: {file_port}\nmultiuser: true\n"),
    );

    let s = serve(&["serve", "--root", &root], &[]).unwrap();
    assert_eq!(s.port, file_port);
    assert_eq!(status(s.port)["multiuser_enabled"], true);
    drop(s);

    let env_port_text = env_port.to_string();
    let s = serve(
        &["serve", "--root", &root],
        &[
            ("INVOKEAI_PORT", &env_port_text),
            ("INVOKEAI_MULTIUSER", "false"),
        ],
    )
    .unwrap();
    assert_eq!(s.port, env_port);
    assert_eq!(status(s.port)["multiuser_enabled"], false);
    drop(s);

    // Names are case-insensitive; empty values are ignored.
    let s = serve(
        &["serve", "--root", &root],
        &[("invokeai_multiuser", "0"), ("INVOKEAI_PORT", "")],
    )
    .unwrap();
    assert_eq!(s.port, file_port);
    assert_eq!(status(s.port)["multiuser_enabled"], false);
    drop(s);

    let flag = flag_port.to_string();
    let s = serve(
        &["serve", "--root", &root, "--port", &flag],
        &[("INVOKEAI_PORT", &env_port_text)],
    )
    .unwrap();
    assert_eq!(s.port, flag_port);
    drop(s);

    // `serve` is the default command; INVOKEAI_ROOT picks the root when --root is absent.
    let s = serve(
        &[],
        &[
            ("INVOKEAI_ROOT", &root),
            ("INVOKEAI_STRICT_PASSWORD_CHECKING", "yes"),
        ],
    )
    .unwrap();
    assert_eq!(s.port, file_port);
    assert_eq!(status(s.port)["strict_password_checking"], true);
}

#[test]
fn a_missing_file_is_created_and_a_relative_config_is_taken_from_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = root_arg(dir.path());
    let port = free_port().to_string();
    let s = serve(&["serve", "--root", &root, "--port", &port], &[]).unwrap();
    drop(s);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("invokeai.yaml")).unwrap(),
        "# Internal metadata - do not edit:\nschema_version: 4.0.3\n\n# Put user settings here - see https://invoke.ai/configuration/invokeai-yaml/:\n"
    );
    assert!(dir.path().join("invokeai.example.yaml").is_file());
    assert!(dir.path().join("databases/atelier.db").is_file());
    assert!(dir.path().join("outputs").is_dir());

    let other_port = free_port();
    std::fs::write(
        dir.path().join("other.yaml"),
        format!("schema_version: 4.0.3\nport: {other_port}\n"),
    )
    .unwrap();
    let s = serve(&["serve", "--root", &root, "--config", "other.yaml"], &[]).unwrap();
    assert_eq!(s.port, other_port);
}

#[test]
fn old_schema_versions_are_migrated_with_a_backup() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let original = format!("schema_version: 4.0.2\nport: {port}\nmultiuser: true\n");
    write_config(dir.path(), &original);
    let s = serve(&["serve", "--root", &root_arg(dir.path())], &[]).unwrap();
    assert_eq!(s.port, port);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("invokeai.yaml.bak")).unwrap(),
        original
    );
    let rewritten = std::fs::read_to_string(dir.path().join("invokeai.yaml")).unwrap();
    assert!(
        rewritten.contains("schema_version: 4.0.3") && rewritten.contains("multiuser: true"),
        "{rewritten}"
    );
}

#[test]
fn bad_configuration_stops_start_up_naming_the_key() {
    for (text, needle) in [
        ("schema_version: 4.0.3\nnot_a_key: 1\n", "not_a_key"),
        ("schema_version: 4.0.3\nport: abc\n", "port"),
        ("schema_version: 4.0.3\nlog_level: verbose\n", "log_level"),
        ("schema_version: 4.0.3\nroot: /somewhere\n", "root"),
        ("schema_version: 9.9.9\n", "schema version"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        write_config(dir.path(), text);
        let root = root_arg(dir.path());
        let (code, log) = serve(&["serve", "--root", &root], &[]).err().unwrap();
        assert_eq!(code, 1, "{text}");
        assert!(
            log.contains("Failed to load config file") && log.contains(needle),
            "{text}: {log}"
        );
        let out = base_command(&["config", "check", "--root", &root], &[])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{text}");
    }
    let dir = tempfile::tempdir().unwrap();
    let (code, log) = serve(
        &["serve", "--root", &root_arg(dir.path())],
        &[("INVOKEAI_ALLOW_ORIGINS", "not json")],
    )
    .err()
    .unwrap();
    assert_eq!(code, 1);
    assert!(log.contains("INVOKEAI_ALLOW_ORIGINS"), "{log}");
}

#[test]
fn known_but_unused_keys_warn_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_config(
        dir.path(),
        &format!(
            "schema_version: 4.0.3\nport: {port}\nprecision: float32\nattention_type: sliced\n"
        ),
    );
    let s = serve(&["serve", "--root", &root_arg(dir.path())], &[]).unwrap();
    let warnings: Vec<&String> = s.log.iter().filter(|l| l.contains("WARN")).collect();
    assert_eq!(
        warnings
            .iter()
            .filter(|l| l.contains("'precision'"))
            .count(),
        1,
        "{warnings:?}"
    );
    assert_eq!(
        warnings
            .iter()
            .filter(|l| l.contains("'attention_type'"))
            .count(),
        1,
        "{warnings:?}"
    );
    let out = base_command(&["config", "check", "--root", &root_arg(dir.path())], &[])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn a_busy_port_moves_to_the_next_one_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    write_config(
        dir.path(),
        &format!("schema_version: 4.0.3\nport: {port}\n"),
    );
    let s = serve(&["serve", "--root", &root_arg(dir.path())], &[]).unwrap();
    assert_ne!(s.port, port);
    assert!(s.port > port);
    assert!(
        s.log
            .iter()
            .any(|l| l.contains(&format!("port {port} is in use"))),
        "{:?}",
        s.log
    );
    drop(busy);
}

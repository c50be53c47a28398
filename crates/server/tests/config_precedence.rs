//! Configuration as the real binary reads it (config.md): the file, `INVOKEAI_*` variables and
//! flags in order of precedence, root resolution, file creation and migration, refusals that
//! name the key, warnings for known-but-unused keys, and the busy-port fallback.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running `atelier serve`, killed when dropped.
struct Served {
    child: Child,
    port: u16,
    /// Standard error up to and including the "listening on" line.
    log: Vec<String>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary in a scrubbed environment: no `INVOKEAI_*`, no `VIRTUAL_ENV`, `HOME` inside
/// `dir` (so a forgotten root never touches the real home), run from `dir`, plus `env`.
fn base_command(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_atelier"));
    cmd.args(args).env_clear().current_dir(dir);
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd.env("HOME", dir.join("home")).env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs a command that exits on its own (`config check`, a failing `serve`).
fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = base_command(dir, args, env)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// Starts the server and waits (up to 20 s) for its "listening on" line. `Err` carries the
/// exit code and standard error of a server that stopped without listening.
fn serve(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<Served, (i32, String)> {
    let mut child = base_command(dir, args, env)
        .stdin(Stdio::null())
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
                let port = line.split("listening on http://").nth(1).map(|rest| {
                    let addr = rest.split_whitespace().next().unwrap();
                    addr.rsplit(':').next().unwrap().parse().unwrap()
                });
                log.push(line);
                if let Some(port) = port {
                    return Ok(Served { child, port, log });
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let code = child.wait().ok().and_then(|s| s.code()).unwrap_or(-1);
                return Err((code, log.join("\n")));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no 'listening on' line within 20 s:\n{}", log.join("\n"));
            }
        }
    }
}

/// `GET /api/v1/auth/status` over a plain HTTP/1.0 connection.
fn status(port: u16) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .write_all(b"GET /api/v1/auth/status HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{text}"
    );
    serde_json::from_str(body).unwrap()
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

const CREATED_FILE: &str = "# Internal metadata - do not edit:\nschema_version: 4.0.3\n\n# Put user settings here - see https://invoke.ai/configuration/invokeai-yaml/:\n";

#[test]
fn precedence_is_flags_then_environment_then_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = root_arg(d);
    let (file_port, env_port, flag_port) = (free_port(), free_port(), free_port());
    let file = format!("schema_version: 4.0.3\nport: {file_port}\nmultiuser: true\n");
    write_config(d, &file);

    // The file alone.
    let s = serve(d, &["serve", "--root", &root], &[]).unwrap();
    assert_eq!(s.port, file_port);
    let st = status(s.port);
    assert_eq!(
        (&st["multiuser_enabled"], &st["strict_password_checking"]),
        (&true.into(), &false.into()),
        "{st}"
    );
    drop(s);

    // The environment over the file.
    let env_port_text = env_port.to_string();
    let s = serve(
        d,
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

    // Names are case-insensitive.
    let s = serve(
        d,
        &["serve", "--root", &root],
        &[("invokeai_multiuser", "0")],
    )
    .unwrap();
    assert_eq!(status(s.port)["multiuser_enabled"], false);
    drop(s);

    // Empty values are ignored: the file's values stand.
    let s = serve(
        d,
        &["serve", "--root", &root],
        &[("INVOKEAI_MULTIUSER", ""), ("INVOKEAI_PORT", "")],
    )
    .unwrap();
    assert_eq!(s.port, file_port);
    assert_eq!(status(s.port)["multiuser_enabled"], true);
    drop(s);

    // The --port flag over the environment.
    let flag = flag_port.to_string();
    let s = serve(
        d,
        &["serve", "--root", &root, "--port", &flag],
        &[("INVOKEAI_PORT", &env_port_text)],
    )
    .unwrap();
    assert_eq!(s.port, flag_port);
    drop(s);

    // `serve` is the default command; INVOKEAI_ROOT picks the root when --root is absent.
    let s = serve(
        d,
        &[],
        &[
            ("INVOKEAI_ROOT", &root),
            ("INVOKEAI_STRICT_PASSWORD_CHECKING", "yes"),
        ],
    )
    .unwrap();
    assert_eq!(s.port, file_port);
    let st = status(s.port);
    assert_eq!(st["strict_password_checking"], true, "{st}");
    assert_eq!(st["multiuser_enabled"], true, "{st}");
    drop(s);

    // None of this was written back to the file.
    assert_eq!(
        std::fs::read_to_string(d.join("invokeai.yaml")).unwrap(),
        file
    );
}

#[test]
fn the_root_is_resolved_like_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().canonicalize().unwrap();
    let check = |args: &[&str], env: &[(&str, &str)]| {
        let mut all = vec!["config", "check"];
        all.extend_from_slice(args);
        let (code, out, err) = run(&d, &all, env);
        assert_eq!(code, 0, "{err}");
        out.lines()
            .next()
            .unwrap()
            .strip_prefix("Configuration OK: ")
            .unwrap()
            .to_owned()
    };
    let expect = |p: &str| d.join(p).join("invokeai.yaml").display().to_string();
    // --root, relative to the working directory; `~` is the home directory.
    assert_eq!(check(&["--root", "rel"], &[]), expect("rel"));
    assert_eq!(check(&["--root", "~/tilde"], &[]), expect("home/tilde"));
    // INVOKEAI_ROOT (relative to the working directory), unless --root is given.
    assert_eq!(
        check(&[], &[("INVOKEAI_ROOT", "envroot")]),
        expect("envroot")
    );
    assert_eq!(
        check(&["--root", "flag"], &[("INVOKEAI_ROOT", "envroot")]),
        expect("flag")
    );
    // Then the virtualenv's parent (an empty INVOKEAI_ROOT is ignored), then ~/invokeai.
    let venv = d.join("project/.venv").display().to_string();
    assert_eq!(
        check(&[], &[("INVOKEAI_ROOT", ""), ("VIRTUAL_ENV", &venv)]),
        expect("project")
    );
    assert_eq!(check(&[], &[]), expect("home/invokeai"));
    // Symlinks are resolved.
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(d.join("rel"), d.join("link")).unwrap();
        assert_eq!(check(&["--root", "link"], &[]), expect("rel"));
    }
}

#[test]
fn a_missing_file_is_created_and_a_relative_config_is_taken_from_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = root_arg(d);
    let port = free_port().to_string();
    // Values from the environment are used but never persisted into the new file.
    let s = serve(
        d,
        &["serve", "--root", &root, "--port", &port],
        &[("INVOKEAI_MULTIUSER", "true")],
    )
    .unwrap();
    assert_eq!(status(s.port)["multiuser_enabled"], true);
    drop(s);
    assert_eq!(
        std::fs::read_to_string(d.join("invokeai.yaml")).unwrap(),
        CREATED_FILE
    );
    let example = std::fs::read_to_string(d.join("invokeai.example.yaml")).unwrap();
    assert!(example.contains("schema_version: 4.0.3"), "{example}");
    assert!(d.join("databases/atelier.db").is_file());
    assert!(d.join("outputs").is_dir());
    // The created file loads cleanly on the next start.
    let (code, _, err) = run(d, &["config", "check", "--root", &root], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("WARN"), "{err}");

    // A relative --config is taken against the root, not the working directory.
    let sub = d.join("cwd");
    std::fs::create_dir(&sub).unwrap();
    let other_port = free_port();
    std::fs::write(
        d.join("other.yaml"),
        format!("schema_version: 4.0.3\nport: {other_port}\n"),
    )
    .unwrap();
    let s = serve(
        &sub,
        &["serve", "--root", &root, "--config", "other.yaml"],
        &[],
    )
    .unwrap();
    assert_eq!(s.port, other_port);
    drop(s);
    assert!(d.join("other.example.yaml").is_file());
    assert!(!sub.join("other.yaml").exists());
    // A missing relative --config is created in the root too.
    let (code, out, err) = run(
        &sub,
        &["config", "check", "--root", &root, "--config", "new.yaml"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(&format!(
            "Configuration OK: {}\n",
            d.canonicalize().unwrap().join("new.yaml").display()
        )),
        "{out}"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("new.yaml")).unwrap(),
        CREATED_FILE
    );
}

#[test]
fn old_schema_versions_are_migrated_with_a_backup() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let original = format!("schema_version: 4.0.2\nport: {port}\nmultiuser: true\n");
    write_config(d, &original);
    let s = serve(d, &["serve", "--root", &root_arg(d)], &[]).unwrap();
    assert_eq!(s.port, port);
    assert_eq!(status(s.port)["multiuser_enabled"], true);
    drop(s);
    assert_eq!(
        std::fs::read_to_string(d.join("invokeai.yaml.bak")).unwrap(),
        original
    );
    let rewritten = std::fs::read_to_string(d.join("invokeai.yaml")).unwrap();
    assert!(
        rewritten.starts_with("# Internal metadata - do not edit:\nschema_version: 4.0.3\n")
            && rewritten.contains(&format!("port: {port}\n"))
            && rewritten.contains("multiuser: true\n"),
        "{rewritten}"
    );
    // The rewritten file is current: a second load leaves it and the backup alone.
    let (code, _, err) = run(d, &["config", "check", "--root", &root_arg(d)], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(d.join("invokeai.yaml")).unwrap(),
        rewritten
    );
    assert_eq!(
        std::fs::read_to_string(d.join("invokeai.yaml.bak")).unwrap(),
        original
    );
}

#[test]
fn bad_configuration_stops_start_up_naming_the_key() {
    for (text, needle) in [
        ("schema_version: 4.0.3\nnot_a_key: 1\n", "not_a_key"),
        ("schema_version: 4.0.3\nport: abc\n", "'port'"),
        ("schema_version: 4.0.3\nlog_level: verbose\n", "'log_level'"),
        ("schema_version: 4.0.3\nroot: /somewhere\n", "'root'"),
        ("schema_version: 9.9.9\n", "schema version"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write_config(d, text);
        let root = root_arg(d);
        let prefix = format!(
            "Failed to load config file {}: ",
            d.canonicalize().unwrap().join("invokeai.yaml").display()
        );
        let (code, log) = serve(d, &["serve", "--root", &root], &[]).err().unwrap();
        assert_eq!(code, 1, "{text}");
        assert!(
            log.contains(&prefix) && log.contains(needle),
            "{text}: {log}"
        );
        let (code, out, err) = run(d, &["config", "check", "--root", &root], &[]);
        assert_eq!((code, out.as_str()), (1, ""), "{text}");
        assert!(
            err.contains(&prefix) && err.contains(needle),
            "{text}: {err}"
        );
        // Nothing was rewritten.
        assert_eq!(
            std::fs::read_to_string(d.join("invokeai.yaml")).unwrap(),
            text
        );
    }
    // Bad environment values stop start-up too, naming the variable.
    for (var, value) in [
        ("INVOKEAI_ALLOW_ORIGINS", "not json"),
        ("INVOKEAI_PORT", "abc"),
        ("invokeai_multiuser", "maybe"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (code, log) = serve(
            dir.path(),
            &["serve", "--root", &root_arg(dir.path())],
            &[(var, value)],
        )
        .err()
        .unwrap();
        assert_eq!(code, 1, "{var}");
        assert!(log.contains(&format!("Invalid value for {var}: ")), "{log}");
    }
}

#[test]
fn known_but_unused_keys_warn_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    write_config(
        d,
        &format!(
            "schema_version: 4.0.3\nport: {port}\nforce_tiled_decode: true\nattention_type: sliced\n"
        ),
    );
    let s = serve(d, &["serve", "--root", &root_arg(d)], &[]).unwrap();
    let log = s.log.clone();
    drop(s);
    for key in ["force_tiled_decode", "attention_type"] {
        let lines: Vec<&String> = log.iter().filter(|l| l.contains(key)).collect();
        assert_eq!(lines.len(), 1, "{log:?}");
        assert!(
            lines[0].contains("WARN")
                && lines[0].ends_with(&format!(
                    "config key '{key}' is accepted but not used by Atelier yet"
                )),
            "{lines:?}"
        );
    }
    let (code, _, err) = run(d, &["config", "check", "--root", &root_arg(d)], &[]);
    assert_eq!(code, 0, "{err}");
    for key in ["force_tiled_decode", "attention_type"] {
        assert_eq!(err.lines().filter(|l| l.contains(key)).count(), 1, "{err}");
    }
    // The same keys from the environment warn the same way.
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run(
        dir.path(),
        &["config", "check", "--root", &root_arg(dir.path())],
        &[("INVOKEAI_FORCE_TILED_DECODE", "true")],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        err.lines()
            .filter(|l| l.contains("config key 'force_tiled_decode' is accepted but not used"))
            .count(),
        1,
        "{err}"
    );
}

#[test]
fn a_busy_port_moves_to_the_next_one_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A busy port whose successor is free.
    let (busy, port) = loop {
        let busy = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = busy.local_addr().unwrap().port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            break (busy, port);
        }
    };
    write_config(d, &format!("schema_version: 4.0.3\nport: {port}\n"));
    let s = serve(d, &["serve", "--root", &root_arg(d)], &[]).unwrap();
    assert_eq!(s.port, port + 1);
    let next = port + 1;
    assert!(
        s.log.iter().any(|l| l.contains("WARN")
            && l.contains(&format!("port {port} is in use; using port {next} instead"))),
        "{:?}",
        s.log
    );
    assert!(
        s.log
            .last()
            .unwrap()
            .contains(&format!("listening on http://127.0.0.1:{next}")),
        "{:?}",
        s.log
    );
    assert_eq!(status(s.port)["multiuser_enabled"], false);
    drop(s);
    drop(busy);
}

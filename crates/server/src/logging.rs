//! The process's log subscriber and its run-time level (`/api/v1/app/logging`).
//!
//! Levels are Python's numbers, as the reference reports them: 10 debug, 20 info, 30 warning,
//! 40 error, 50 critical (0, "not set", logs everything).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

type Reload = Arc<dyn Fn(&str) + Send + Sync>;

/// The current level and, when this process installed the subscriber, a way to change it.
#[derive(Clone)]
pub struct LogControl {
    level: Arc<AtomicU8>,
    reload: Option<Reload>,
}

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogControl")
            .field("level", &self.level())
            .finish()
    }
}

/// Python level number of a config `log_level` name.
pub fn level_number(name: &str) -> u8 {
    match name {
        "debug" => 10,
        "warning" => 30,
        "error" => 40,
        "critical" => 50,
        _ => 20,
    }
}

fn directive(level: u8) -> &'static str {
    match level {
        0..=10 => "debug",
        11..=20 => "info",
        21..=30 => "warn",
        _ => "error",
    }
}

impl LogControl {
    /// A control that only records the level (tests, or when another subscriber is installed).
    pub fn detached(level: u8) -> Self {
        Self {
            level: Arc::new(AtomicU8::new(level)),
            reload: None,
        }
    }

    pub fn level(&self) -> u8 {
        self.level.load(Ordering::Relaxed)
    }

    pub fn set_level(&self, level: u8) {
        self.level.store(level, Ordering::Relaxed);
        if let Some(reload) = &self.reload {
            reload(directive(level));
        }
    }
}

/// Colours only on a terminal, so logs written to files and pipes stay plain text.
fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

fn filter_for(level: &str) -> EnvFilter {
    EnvFilter::new(format!("{level},sqlx=warn,hyper=warn,tower=warn"))
}

/// Installs the global subscriber at `level` (a config name). `RUST_LOG`, when set, wins and the
/// level can then not be changed at run time.
pub fn init(level: &str) -> LogControl {
    let number = level_number(level);
    if let Ok(from_env) = EnvFilter::try_from_default_env() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(from_env)
            .with_writer(std::io::stderr)
            .with_ansi(colour())
            .try_init();
        return LogControl::detached(number);
    }
    let (layer, handle) = reload::Layer::new(filter_for(directive(number)));
    let installed = Registry::default()
        .with(layer)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(colour()),
        )
        .try_init()
        .is_ok();
    let mut control = LogControl::detached(number);
    if installed {
        control.reload = Some(Arc::new(move |d: &str| {
            let _ = handle.reload(filter_for(d));
        }));
    }
    control
}

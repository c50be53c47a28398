//! The engine's error type. Every fallible engine call returns [`EngineError`]; nothing in the crate panics on
//! bad input.

/// Errors returned by the engine.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// A scheduler name that InvokeAI accepts but this server does not implement yet. The message is the one the
    /// API returns with a 422 at enqueue (spec `generation.md` §10.6).
    #[error("scheduler '{0}' is not supported by this server")]
    UnsupportedScheduler(String),
    /// A name outside InvokeAI's scheduler list.
    #[error("unknown scheduler '{0}'")]
    UnknownScheduler(String),
    /// A caller-supplied value is out of range (zero steps, a size that is not a multiple of 8, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Two buffers that must have the same length do not.
    #[error("length mismatch: {what} has {actual} values, expected {expected}")]
    LengthMismatch {
        /// Which buffer is wrong.
        what: &'static str,
        /// The length that was expected.
        expected: usize,
        /// The length that was given.
        actual: usize,
    },
    /// `step`, `scale_model_input` or `add_noise` was called before `set_timesteps`.
    #[error("set_timesteps must be called before {0}")]
    TimestepsNotSet(&'static str),
    /// A timestep that is not part of the current schedule.
    #[error("timestep {0} is not in the scheduler's schedule")]
    TimestepNotInSchedule(f64),
    /// The scheduler has already taken every step of its schedule.
    #[error("the scheduler has no steps left (schedule of {0} timesteps)")]
    ScheduleExhausted(usize),
    /// The run was canceled through its cancel flag (checked once per denoising step).
    #[error("canceled")]
    Canceled,
    /// A model file or folder is missing, unreadable, truncated or inconsistent (a corrupt safetensors header,
    /// a tensor with the wrong shape, a config value this engine does not support, ...).
    #[error("invalid model: {0}")]
    InvalidModel(String),
    /// Reading or writing a file failed.
    #[error("i/o error: {0}")]
    Io(String),
    /// The tensor back end (candle) reported an error.
    #[error("tensor back end: {0}")]
    Backend(String),
}

impl From<candle_core::Error> for EngineError {
    fn from(e: candle_core::Error) -> Self {
        EngineError::Backend(e.to_string())
    }
}

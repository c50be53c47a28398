//! Atelier's integration suite: one test binary (see STYLE.md §10). Every test starts a real
//! server on 127.0.0.1:0 over a temporary root with a real SQLite file.

// Test code: a failed expectation is a failed test.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

mod app_info;
mod app_settings;
mod auth_flow;
mod boards;
mod body_validation;
mod cli;
mod client_state;
mod config_precedence;
mod cors_refresh;
mod events;
mod gallery;
mod generate;
mod generation_e2e;
mod guards;
mod images;
mod isolation;
mod model_convert;
mod models;
mod ownership;
mod queue;
mod single_user;
mod socket_client;
mod style_presets;
mod throttle_audit;
mod users_admin;
mod worker;
mod workflows;

//! iscamd's integration tests: one test binary, each file a module, so that the tests
//! compile and link once (22 binaries each linked the whole dependency graph).
//! `cargo nextest run` still runs every test in its own process.

mod common;

mod accuracy;
mod cam_method;
mod cli;
mod daemon;
mod daemon_tls;
#[cfg(feature = "eval")]
mod eval;
mod events;
mod health;
mod hostile_commands;
mod hostile_images;
mod kernel_choice;
mod metrics;
mod model_fetch;
mod op_swaps;
#[cfg(feature = "ort")]
mod ort_backend;
mod quantize;
mod reference_maps;
mod reload;
mod schemas;
mod soak;
#[cfg(feature = "gstreamer")]
mod streams;
mod systemd;
mod web;
mod zoo;

//! iscamd: classify camera frames with an ONNX model on tract and explain the decisions
//! with gradient-free class activation maps (Score-CAM, SS-CAM, IS-CAM).
//!
//! Data flows `source → model → cam`: [`source`] decodes frames, [`model`] runs the
//! classifier (logits and CAM-layer activations from one pass), [`cam`] turns those
//! activations into heatmaps, and [`analysis`] ties them together for one frame;
//! [`publish`] speaks MQTT and [`daemon`] wires a live pipeline from [`config`]. With the
//! `eval` feature, `eval` measures how faithful the maps are.

pub mod analysis;
#[cfg(feature = "eval")]
pub mod bench;
pub mod bundle;
pub mod cam;
pub mod config;
pub mod daemon;
pub mod error;
#[cfg(feature = "eval")]
pub mod eval;
pub mod events;
pub mod file;
pub mod model;
pub mod publish;
pub mod source;
pub mod telemetry;
pub mod web;

pub use error::{Error, Result};

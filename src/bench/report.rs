//! `iscamd bench --report FILE`: one run's figures with the machine they were measured on,
//! as JSON a user can attach to an issue (schema `iscamd.bench/1`, docs/benchmarks.md).

use serde::Serialize;

use super::{HeatmapRow, LiveLatency, ModelCost, ThroughputRow};
use crate::model::kernels;

#[derive(Debug, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub iscamd: &'static str,
    /// When the run started, RFC 3339.
    pub date: String,
    /// The command line, as run.
    pub command: Vec<String>,
    pub machine: Machine,
    pub models: Vec<ModelCost>,
    pub throughput: Vec<ThroughputRow>,
    pub heatmaps: Vec<HeatmapRow>,
    pub live: Option<LiveLatency>,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpu: String,
    /// The instruction sets tract found.
    pub instruction_sets: String,
    /// Cores this process may run on.
    pub cores: usize,
    /// Single-thread f32 peak through tract's kernels, GFLOP/s.
    pub peak_gflops: f64,
}

impl Report {
    /// An empty report of this machine, to which the run adds its rows.
    pub fn new(command: Vec<String>, peak_gflops: f64, models: Vec<ModelCost>) -> Self {
        Report {
            schema: "iscamd.bench/1",
            iscamd: env!("CARGO_PKG_VERSION"),
            date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            command,
            machine: Machine {
                cpu: kernels::cpu_model(),
                instruction_sets: kernels::instruction_sets(),
                cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
                peak_gflops,
            },
            models,
            throughput: Vec::new(),
            heatmaps: Vec::new(),
            live: None,
        }
    }
}

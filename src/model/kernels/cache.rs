//! The measured kernel choice of a model, kept on disk by CPU and model so that later starts
//! need no measurement: like a TensorRT engine cache, it is only ever a speed-up. A missing,
//! unreadable or stale entry means measuring again; one that cannot be written is logged.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Choice, ChosenSplit};

/// Where choices are kept: `$STATE_DIRECTORY/kernels` under systemd, else
/// `$XDG_CACHE_HOME/iscamd/kernels` or `~/.cache/iscamd/kernels`.
pub fn cache_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(state) = var("STATE_DIRECTORY") {
        return Some(state.join("kernels"));
    }
    let cache = var("XDG_CACHE_HOME").or_else(|| var("HOME").map(|h| h.join(".cache")))?;
    Some(cache.join("iscamd").join("kernels"))
}

/// One model's measured choice on one CPU, as the cache file holds it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CachedChoice {
    /// What the measurement ran on: CPU model, instruction sets, iscamd's version.
    pub cpu: String,
    /// SHA-256 of the model file.
    pub model: String,
    /// [`Choice`]'s text form.
    pub choice: String,
    /// Milliseconds per pass of each candidate, fastest first (`tract`: tract's own ladder).
    pub measured: Vec<(String, f64)>,
    /// How maps share their threads, per thread count measured so far.
    #[serde(default)]
    pub splits: Vec<ChosenSplit>,
}

impl CachedChoice {
    /// The entry for `model` on this CPU in `dir`, if there is a valid one.
    pub fn read(dir: &Path, model: &Path) -> Option<(CachedChoice, Choice)> {
        let (cpu, hash) = (cpu_identity(), crate::file::sha256_hex(model).ok()?);
        let entry = entry_path(dir, &cpu, &hash);
        let text = crate::file::read_text(&entry, "kernel cache", 1 << 20).ok()?;
        let cached: CachedChoice = serde_json::from_str(&text).ok()?;
        if cached.cpu != cpu || cached.model != hash {
            return None;
        }
        let choice = Choice::parse(&cached.choice).ok()?;
        Some((cached, choice))
    }

    /// A new entry for `model` on this CPU, or `None` when the model cannot be read.
    pub fn new(model: &Path, choice: Choice, measured: Vec<(String, f64)>) -> Option<Self> {
        Some(CachedChoice {
            cpu: cpu_identity(),
            model: crate::file::sha256_hex(model).ok()?,
            choice: choice.to_string(),
            measured,
            splits: Vec::new(),
        })
    }

    /// The split measured for `threads`, if this entry holds one.
    pub fn split(&self, threads: usize) -> Option<&ChosenSplit> {
        self.splits.iter().find(|s| s.threads == threads)
    }

    /// The file of this entry in `dir`.
    pub fn file(&self, dir: &Path) -> PathBuf {
        entry_path(dir, &self.cpu, &self.model)
    }

    /// Writes the entry atomically (a temporary file renamed into place).
    pub fn write(&self, dir: &Path) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let path = self.file(dir);
        let temporary = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&temporary, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&temporary, &path)?;
        Ok(path)
    }
}

fn entry_path(dir: &Path, cpu: &str, model: &str) -> PathBuf {
    let cpu = sha256_hex(cpu.as_bytes());
    dir.join(format!("{}-{}.json", &cpu[..16], &model[..16]))
}

/// The CPU as the kernels see it: its model, the instruction sets tract found, and
/// iscamd's version, own ops and own kernels (another set of them measures differently),
/// and its build (a debug build runs iscamd's own code at another speed than a release
/// build, tract's at the same: a choice measured by one does not hold for the other).
pub fn cpu_identity() -> String {
    format!(
        "{}; {}; iscamd {} {} build (own ops: {}; own kernels: {})",
        cpu_model(),
        instruction_sets(),
        env!("CARGO_PKG_VERSION"),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        super::OWN_OPS.join(", "),
        super::OWN_TIERS.join(", ")
    )
}

/// The CPU's model name, or its ARM implementer and part numbers.
pub fn cpu_model() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        cpuinfo
            .lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    field("model name")
        .or_else(|| {
            Some(format!(
                "arm implementer {} part {}",
                field("CPU implementer")?,
                field("CPU part")?
            ))
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// The instruction sets tract found (and may use), e.g. `x86_64,avx,avx2,fma,avx512f,…`.
pub fn instruction_sets() -> String {
    super::leave_out_amx();
    format!("{:?}", tract_onnx::tract_core::tract_linalg::isa::native())
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_found_for_its_model_only() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("a.onnx");
        std::fs::write(&model, b"model a").unwrap();
        let choice = Choice::parse("f32=generic").unwrap();
        let entry = CachedChoice::new(&model, choice, vec![("generic".into(), 9.0)]).unwrap();
        entry.write(dir.path()).unwrap();
        let (read, read_choice) = CachedChoice::read(dir.path(), &model).expect("the entry");
        assert_eq!((read, read_choice), (entry, choice));
        std::fs::write(&model, b"model b").unwrap();
        assert!(
            CachedChoice::read(dir.path(), &model).is_none(),
            "another model"
        );
    }

    #[test]
    fn an_entry_of_another_cpu_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("a.onnx");
        std::fs::write(&model, b"model a").unwrap();
        let mut entry = CachedChoice::new(&model, Choice::default(), vec![]).unwrap();
        let file = entry.file(dir.path());
        entry.cpu = "another CPU".into();
        std::fs::write(&file, serde_json::to_vec(&entry).unwrap()).unwrap();
        assert!(CachedChoice::read(dir.path(), &model).is_none());
    }

    #[test]
    fn the_cpu_identity_names_the_instruction_sets() {
        let cpu = cpu_identity();
        assert!(
            cpu.contains("iscamd ") && cpu.contains("depthwise"),
            "{cpu}"
        );
        assert_ne!(sha256_hex(cpu.as_bytes()), sha256_hex(b"another CPU"));
    }
}

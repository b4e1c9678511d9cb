//! The kernel settings a user can give: their grammar's errors, and the environment's
//! settings (`ISCAMD_KERNELS`, `ISCAMD_MATMUL`, `ISCAMD_IN_FLIGHT`), read once.

use std::sync::OnceLock;

use super::{Choice, InFlight, Matmul, Policy, CHOICE_VAR, IN_FLIGHT_VAR, POLICY_VAR};

/// A kernel setting that cannot be read, and why.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SettingError {
    #[error("unknown kernel policy {0:?}: expected tuned or stock")]
    Policy(String),
    #[error("{0:?}: expected KEY=VALUE, e.g. f32=fma")]
    NotKeyValue(String),
    #[error("{0:?}: expected f32, i32, without or max-pool")]
    UnknownKey(String),
    #[error("{name:?}: tract has no such tier (tiers here: {tiers})")]
    UnknownTier { name: String, tiers: String },
    #[error("without={name:?}: iscamd has no such op (ops: {ops})")]
    UnknownOp { name: String, ops: String },
    #[error("max-pool={name:?}: not a form this CPU runs (here: {here})")]
    UnknownPool { name: String, here: String },
    #[error("{0:?}: expected how many passes run at once, a number ≥ 1")]
    InFlight(String),
    /// A setting of the environment: the variable it came from, then what is wrong.
    #[error("{var}")]
    Env {
        var: &'static str,
        #[source]
        source: Box<SettingError>,
    },
}

/// The kernel settings of the environment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EnvSettings {
    /// `ISCAMD_KERNELS`: `tuned` (unset) or `stock`.
    pub policy: Policy,
    /// `ISCAMD_MATMUL`: a forced choice, or measured and cached (unset).
    pub matmul: Matmul,
    /// `ISCAMD_IN_FLIGHT`: passes at once, or measured (unset).
    pub in_flight: InFlight,
}

impl EnvSettings {
    /// The environment's settings, read at the first call; the error names the variable.
    pub fn get() -> Result<&'static EnvSettings, &'static SettingError> {
        static SETTINGS: OnceLock<Result<EnvSettings, SettingError>> = OnceLock::new();
        SETTINGS.get_or_init(EnvSettings::read).as_ref()
    }

    /// The environment's settings, or the defaults when one is unreadable (`iscamd`
    /// refuses those at start, before any model is loaded).
    pub fn or_default() -> EnvSettings {
        EnvSettings::get().cloned().unwrap_or_default()
    }

    fn read() -> Result<EnvSettings, SettingError> {
        let var = |name: &'static str| std::env::var(name).ok().map(|v| (name, v));
        let in_env = |var: &'static str| {
            move |e: SettingError| SettingError::Env {
                var,
                source: Box::new(e),
            }
        };
        let mut settings = EnvSettings::default();
        if let Some((name, v)) = var(POLICY_VAR) {
            settings.policy = Policy::parse(v.trim()).map_err(in_env(name))?;
        }
        if let Some((name, v)) = var(CHOICE_VAR) {
            settings.matmul = Matmul::Forced(Choice::parse(&v).map_err(in_env(name))?);
        }
        if let Some((name, v)) = var(IN_FLIGHT_VAR) {
            settings.in_flight = match v.trim().parse::<usize>() {
                Ok(n) if n > 0 => InFlight::Forced(n),
                _ => return Err(in_env(name)(SettingError::InFlight(v))),
            };
        }
        Ok(settings)
    }
}

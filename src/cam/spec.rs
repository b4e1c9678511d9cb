//! The one way a CAM method is written, everywhere iscamd takes one (`explain --method`,
//! `eval --methods`, `bench --heatmaps`, `[cam] method`, MQTT `explain` commands):
//!
//! ```text
//! NAME[:key=value,...]     NAME = cam | recipro | scorecam | sscam | iscam
//!   n=STEPS    masks per channel (IS-CAM steps, SS-CAM noise samples)
//!   k=K        the K channels ranked highest by `select`; 0 = all non-constant ones
//!   select=S   variance (largest activation variance, the default) or contribution
//!              (largest w_{c,k}·mean(A_k): the classifier's weight for the class)
//!   sigma=S    SS-CAM's noise standard deviation
//!   r=PIXELS   score the masked inputs at PIXELS×PIXELS
//! ```
//! Unset keys take the method's defaults ([`CamParams::new`]): `iscam` is the reduced-N
//! default (1 step, top 64 channels), `sscam` 35 steps with σ = 2 on all channels,
//! `scorecam` all channels. `cam` and `recipro` run no masked passes and take no keys. A spec prints back as it parses ([`std::fmt::Display`]).

use std::fmt;

use super::method::{CamParams, Method, Selection};
use crate::error::{Error, Result};

/// Parses one spec such as `iscam:n=10,k=0`.
pub fn parse(spec: &str) -> Result<CamParams> {
    let bad = |reason: String| Error::invalid("method", format!("{spec:?}: {reason}"));
    let (name, args) = spec.trim().split_once(':').unwrap_or((spec.trim(), ""));
    let (mut n, mut k, mut sigma, mut r, mut select) = (None, None, None, None, None);
    for arg in args.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        let (key, value) = arg
            .split_once('=')
            .ok_or_else(|| bad(format!("{arg:?} is not key=value")))?;
        let whole = |v: &str| {
            v.parse::<usize>()
                .map_err(|_| bad(format!("{key}={v} is not a whole number")))
        };
        let slot = match key {
            "n" => &mut n,
            "k" => &mut k,
            "r" => &mut r,
            "sigma" => {
                let v = value
                    .parse::<f32>()
                    .map_err(|_| bad(format!("sigma={value} is not a number")))?;
                set_once(&mut sigma, v).map_err(|_| bad("sigma is given twice".into()))?;
                continue;
            }
            "select" => {
                let v = value.parse::<Selection>().map_err(|e| bad(e.to_string()))?;
                set_once(&mut select, v).map_err(|_| bad("select is given twice".into()))?;
                continue;
            }
            other => {
                return Err(bad(format!(
                    "unknown parameter {other:?} (n, k, select, sigma, r)"
                )))
            }
        };
        set_once(slot, whole(value)?).map_err(|_| bad(format!("{key} is given twice")))?;
    }
    if n == Some(0) {
        return Err(bad("n must be at least 1".into()));
    }
    let mut params = CamParams::new(name, n, k).map_err(|e| match e {
        Error::Invalid { reason, .. } => bad(reason),
        other => other,
    })?;
    match (&mut params.method, sigma) {
        (Method::SsCam { sigma: s, .. }, Some(v)) => *s = v,
        (_, Some(_)) => return Err(bad("sigma applies to sscam only".into())),
        _ => {}
    }
    if matches!(params.method, Method::Cam | Method::Recipro) && (r.is_some() || select.is_some()) {
        return Err(bad(format!(
            "{} runs no masked passes: r and select apply to the masked methods",
            params.method.name()
        )));
    }
    params.score_size = r;
    params.select = select.unwrap_or_default();
    Ok(params)
}

/// What the settings beside a spec (config keys, flags, command fields) lay over it: each
/// one given replaces the spec's value, or the method's default.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Overrides {
    pub steps: Option<usize>,
    pub channels: Option<usize>,
    /// SS-CAM's σ; ignored by the other methods.
    pub sigma: Option<f32>,
    pub score_size: Option<usize>,
}

impl CamParams {
    /// These parameters with `overrides` laid over them.
    pub fn overridden(mut self, overrides: Overrides) -> Result<CamParams> {
        if let Some(n) = overrides.steps {
            self.set_steps(n)?;
        }
        if let Some(k) = overrides.channels {
            self.channels = k;
        }
        if let (Method::SsCam { sigma, .. }, Some(s)) = (&mut self.method, overrides.sigma) {
            *sigma = s;
        }
        self.score_size = overrides.score_size.or(self.score_size);
        Ok(self)
    }
}

/// Reads a spec where serde reads a string (`[cam] method`), so that it is parsed once.
pub fn deserialize<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<CamParams, D::Error> {
    let text = <String as serde::Deserialize>::deserialize(d)?;
    parse(&text).map_err(serde::de::Error::custom)
}

fn set_once<T>(slot: &mut Option<T>, value: T) -> std::result::Result<(), ()> {
    match slot.replace(value) {
        None => Ok(()),
        Some(_) => Err(()),
    }
}

/// Splits a comma-separated list of specs (`scorecam,iscam:n=10,k=0,sscam`): an item
/// with `=` and no `:` continues the spec before it. `;` also separates specs.
pub fn split_list(list: &str) -> Vec<String> {
    let mut specs: Vec<String> = Vec::new();
    for item in list
        .split([',', ';'])
        .map(str::trim)
        .filter(|i| !i.is_empty())
    {
        match specs.last_mut() {
            Some(last) if item.contains('=') && !item.contains(':') => {
                last.push(if last.contains(':') { ',' } else { ':' });
                last.push_str(item);
            }
            _ => specs.push(item.to_string()),
        }
    }
    specs
}

/// The spec that parses back to these parameters' method, steps, channels, sigma and
/// score size (weighting, seed and batch are not part of a spec).
impl fmt::Display for CamParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if matches!(self.method, Method::Cam | Method::Recipro) {
            return write!(f, "{}", self.method.name());
        }
        write!(f, "{}:", self.method.name())?;
        match self.method {
            Method::Cam | Method::Recipro => {}
            Method::ScoreCam => write!(f, "k={}", self.channels)?,
            Method::IsCam { steps } => write!(f, "n={steps},k={}", self.channels)?,
            Method::SsCam { steps, sigma } => {
                write!(f, "n={steps},k={},sigma={sigma}", self.channels)?
            }
        }
        if self.select != Selection::Variance {
            write!(f, ",select={}", self.select.name())?;
        }
        if let Some(r) = self.score_size {
            write!(f, ",r={r}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cam::{REDUCED_N_CHANNELS, REDUCED_N_STEPS};

    #[test]
    fn names_alone_take_the_one_set_of_defaults() {
        let iscam = parse("iscam").unwrap();
        assert_eq!(
            (iscam.steps(), iscam.channels),
            (REDUCED_N_STEPS, REDUCED_N_CHANNELS)
        );
        assert_eq!(iscam, CamParams::new("iscam", None, None).unwrap());
        let sscam = parse("sscam").unwrap();
        assert_eq!(
            sscam.method,
            Method::SsCam {
                steps: 35,
                sigma: 2.0
            }
        );
        assert_eq!(sscam.channels, 0);
        assert_eq!(parse("scorecam").unwrap().channels, 0);
    }

    #[test]
    fn keys_override_the_defaults() {
        let full = parse("iscam:n=10,k=0").unwrap();
        assert_eq!((full.steps(), full.channels), (10, 0));
        let p = parse(" sscam:n=4, k=32, sigma=0.5, r=163 ").unwrap();
        assert_eq!(
            p.method,
            Method::SsCam {
                steps: 4,
                sigma: 0.5
            }
        );
        assert_eq!((p.channels, p.score_size), (32, Some(163)));
        let p = parse("iscam:k=16,select=contribution").unwrap();
        assert_eq!((p.channels, p.select), (16, Selection::Contribution));
        assert_eq!(parse("iscam").unwrap().select, Selection::Variance);
        let cam = parse("cam").unwrap();
        assert_eq!((cam.method, cam.passes(512)), (Method::Cam, 0));
    }

    #[test]
    fn specs_print_back_as_they_parse() {
        for spec in [
            "iscam",
            "iscam:n=10,k=0",
            "scorecam",
            "sscam:n=4,k=32,sigma=0.5,r=163",
            "cam",
            "scorecam:k=16,select=contribution",
        ] {
            let p = parse(spec).unwrap();
            assert_eq!(parse(&p.to_string()).unwrap(), p, "{spec} → {p}");
        }
        assert_eq!(parse("iscam").unwrap().to_string(), "iscam:n=1,k=64");
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (spec, expected) in [
            ("gradcam", "gradcam"),
            ("iscam:n", "not key=value"),
            ("iscam:n=x", "n=x is not a whole number"),
            ("iscam:n=0", "n must be at least 1"),
            ("iscam:q=1", "unknown parameter \"q\""),
            ("iscam:sigma=2", "sscam only"),
            ("iscam:n=2,n=3", "given twice"),
            ("scorecam:n=3", "one mask per channel"),
            ("cam:n=2", "no masked passes"),
            ("cam:k=8", "every channel"),
            ("cam:r=163", "r and select"),
            ("iscam:select=gradient", "expected variance or contribution"),
        ] {
            let e = parse(spec).unwrap_err().to_string();
            assert!(e.contains(expected), "{spec}: {e}");
        }
    }

    #[test]
    fn separate_settings_override_the_spec() {
        let with = |spec: &str, steps, channels| {
            parse(spec).unwrap().overridden(Overrides {
                steps,
                channels,
                ..Overrides::default()
            })
        };
        let p = with("iscam:n=4,k=32", Some(2), None).unwrap();
        assert_eq!((p.steps(), p.channels), (2, 32));
        let p = with("sscam", None, Some(8)).unwrap();
        assert_eq!((p.steps(), p.channels), (35, 8));
        assert!(with("scorecam", Some(3), None).is_err());
        let p = parse("sscam:r=96")
            .unwrap()
            .overridden(Overrides {
                sigma: Some(1.5),
                score_size: Some(128),
                ..Overrides::default()
            })
            .unwrap();
        assert_eq!(p.to_string(), "sscam:n=35,k=0,sigma=1.5,r=128");
    }

    #[test]
    fn lists_split_between_specs_not_inside_them() {
        assert_eq!(
            split_list("scorecam,iscam:n=10,k=0;sscam, iscam"),
            ["scorecam", "iscam:n=10,k=0", "sscam", "iscam"]
        );
        assert_eq!(split_list("iscam,k=8"), ["iscam:k=8"]);
    }
}

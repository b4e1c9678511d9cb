//! What one `eval` run scores and where it stands: the methods in order (those asked for,
//! the baseline, the controls, the sweeps) and the results an earlier run already wrote.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::{expand_sweep, read_rows, MethodSpec, SpecKind};
use crate::cam::{spec, Weighting};
use crate::error::{Error, Result};
use crate::model::Classifier;

/// The controls every evaluation adds: the floor to beat and the centre prior.
const CONTROLS: [&str; 2] = ["random", "center"];

/// The methods of one run.
#[derive(Clone, Debug)]
pub struct Methods {
    pub specs: Vec<MethodSpec>,
    /// Those the curves plot shows: the methods asked for by name; a sweep's members would
    /// crowd it.
    pub curves: Vec<String>,
}

impl Methods {
    /// `methods` (comma-separated specs), then `baseline`, the controls and every member of
    /// each sweep, each once.
    pub fn new(
        methods: &str,
        baseline: Option<&str>,
        sweeps: &[String],
        weighting: Weighting,
        seed: u64,
    ) -> Result<Self> {
        let mut labels = spec::split_list(methods);
        let add = |labels: &mut Vec<String>, label: &str| {
            if !labels.iter().any(|l| l == label) {
                labels.push(label.to_string());
            }
        };
        baseline.into_iter().for_each(|b| add(&mut labels, b));
        CONTROLS.into_iter().for_each(|c| add(&mut labels, c));
        let curves = labels.clone();
        for sweep in sweeps {
            expand_sweep(sweep)?
                .iter()
                .for_each(|l| add(&mut labels, l));
        }
        let specs = labels
            .iter()
            .map(|l| MethodSpec::parse(l, weighting, seed))
            .collect::<Result<_>>()?;
        Ok(Methods { specs, curves })
    }

    pub fn labels(&self) -> Vec<String> {
        self.specs.iter().map(|s| s.label.clone()).collect()
    }

    /// Refuses a CAM method this model cannot run (more channels than its CAM layer has, …).
    pub fn check_against(&self, classifier: &Classifier) -> Result<()> {
        let channels = classifier.cam_layer().map_or(0, |l| l.channels);
        for spec in &self.specs {
            if let SpecKind::Cam(p) = &spec.kind {
                p.validate(channels, classifier.input_size())
                    .map_err(|e| Error::invalid("method", format!("{}: {e}", spec.label)))?;
            }
        }
        Ok(())
    }
}

/// The (image, method) results already in a run's CSV.
pub struct Resume {
    pub csv: PathBuf,
    /// How many rows the CSV holds (also those of images not in this run).
    pub rows: usize,
    pub done: HashSet<(String, String)>,
}

impl Resume {
    pub fn read(csv: &Path) -> Result<Self> {
        let rows = read_rows(csv)?;
        Ok(Resume {
            csv: csv.to_owned(),
            rows: rows.len(),
            done: super::done(&rows),
        })
    }

    /// How many of these images × methods are done already.
    pub fn maps_done(&self, images: &[PathBuf], specs: &[MethodSpec]) -> usize {
        images
            .iter()
            .map(|p| {
                let image = p.display().to_string();
                specs
                    .iter()
                    .filter(|s| self.done.contains(&(image.clone(), s.label.clone())))
                    .count()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_come_in_order_once_with_the_controls() {
        let sweeps = ["iscam:n=1..2".to_string()];
        let m = Methods::new(
            "scorecam,iscam:n=1",
            Some("scorecam"),
            &sweeps,
            Weighting::Prob,
            0,
        )
        .unwrap();
        assert_eq!(
            m.labels(),
            ["scorecam", "iscam:n=1", "random", "center", "iscam:n=2"]
        );
        assert_eq!(m.curves, ["scorecam", "iscam:n=1", "random", "center"]);
        let bad = Methods::new("gradcam", None, &[], Weighting::Prob, 0).unwrap_err();
        assert!(bad.to_string().contains("unknown method"), "{bad}");
    }
}

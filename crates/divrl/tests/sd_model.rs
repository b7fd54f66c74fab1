//! The Stable Diffusion networks against diffusers (fixtures/sd/make_fixture.py): a tiny random
//! UNet2DConditionModel and AutoencoderKL saved by diffusers (real key names, a few channels) and
//! their outputs; and the key names (and VAE decoder shapes) of the real SD 1.5 UNet and VAE.
use divrl::models::sd::unet2d::{UNet2DCondition, UNet2DConditionConfig};
use divrl::models::sd::vae::{AutoencoderKlConfig, VaeDecoder};
use divrl::models::sd::{load_weights, IntOrList};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tch::{nn::VarStore, Device, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sd")
        .join(name)
}

fn expected() -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(fixture("tiny_expected.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn tiny_unet_matches_diffusers() {
    let text = std::fs::read_to_string(fixture("tiny/unet/config.json")).unwrap();
    let cfg = UNet2DConditionConfig::from_json(&text).unwrap();
    let mut vs = VarStore::new(Device::Cpu);
    let unet = UNet2DCondition::new(&vs.root(), &cfg).unwrap();
    load_weights(
        &mut vs,
        &fixture("tiny/unet/diffusion_pytorch_model.safetensors"),
        &|n| n.to_string(),
    )
    .unwrap();
    // Every tensor of the diffusers file is a variable here, and the other way round.
    let file: BTreeSet<String> =
        Tensor::read_safetensors(fixture("tiny/unet/diffusion_pytorch_model.safetensors"))
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
    let ours: BTreeSet<String> = vs.variables().into_keys().collect();
    assert_eq!(file, ours);
    let e = expected();
    let out = tch::no_grad(|| unet.forward(&e["unet_x"], &e["unet_t"], &e["unet_ctx"]));
    let scale = e["unet_out"].abs().max().double_value(&[]);
    let d = max_abs(&out, &e["unet_out"]);
    assert!(scale > 0.1, "degenerate fixture");
    eprintln!("unet: max |Δ| = {d:.3e} (scale {scale:.3})");
    assert!(d < 1e-4 * scale.max(1.0), "max |Δ| = {d} (scale {scale})");
}

#[test]
fn tiny_vae_decoder_matches_diffusers() {
    let text = std::fs::read_to_string(fixture("tiny/vae/config.json")).unwrap();
    let cfg: AutoencoderKlConfig = serde_json::from_str(&text).unwrap();
    let mut vs = VarStore::new(Device::Cpu);
    let vae = VaeDecoder::new(&vs.root(), &cfg).unwrap();
    load_weights(
        &mut vs,
        &fixture("tiny/vae/diffusion_pytorch_model.safetensors"),
        &|n| n.to_string(),
    )
    .unwrap();
    let e = expected();
    // diffusers' vae.decode takes unscaled latents; ours divides by scaling_factor.
    let z = &e["vae_z"] * cfg.scaling_factor;
    let out = tch::no_grad(|| vae.decode(&z));
    assert_eq!(out.size(), e["vae_out"].size());
    let scale = e["vae_out"].abs().max().double_value(&[]);
    let d = max_abs(&out, &e["vae_out"]);
    eprintln!("vae: max |Δ| = {d:.3e} (scale {scale:.3})");
    assert!(d < 1e-4 * scale.max(1.0), "max |Δ| = {d} (scale {scale})");
}

fn sd15(name: &str) -> (Value, BTreeMap<String, Vec<i64>>) {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap();
    let keys = v["keys"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, s)| {
            (
                k.clone(),
                s.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_i64().unwrap())
                    .collect(),
            )
        })
        .collect();
    (v["config"].clone(), keys)
}

#[test]
fn sd15_unet_key_layout() {
    // The real SD 1.5 block structure (4 blocks, 2 layers, 8 heads) with narrow channels: the
    // variable names must be exactly those of runwayml/stable-diffusion-v1-5's unet.
    let (cfg_json, keys) = sd15("keys-sd15-unet.json");
    let mut cfg: UNet2DConditionConfig = serde_json::from_value(cfg_json).unwrap();
    assert_eq!(cfg.attention_head_dim, IntOrList::Int(8));
    let real_channels = cfg.block_out_channels.clone();
    cfg.block_out_channels = vec![32, 64, 128, 128];
    cfg.cross_attention_dim = 24;
    let vs = VarStore::new(Device::Cpu);
    UNet2DCondition::new(&vs.root(), &cfg).unwrap();
    let ours: BTreeMap<String, Vec<i64>> = vs
        .variables()
        .into_iter()
        .map(|(k, v)| (k, v.size()))
        .collect();
    let want: BTreeSet<&String> = keys.keys().collect();
    let got: BTreeSet<&String> = ours.keys().collect();
    assert_eq!(got, want);
    // Shapes: every real dimension is ours scaled by 10 (channels 32→320, …) or 32 (ctx 24→768),
    // or equal (kernel sizes, in/out channels).
    for (k, s) in &ours {
        let r = &keys[k];
        assert_eq!(r.len(), s.len(), "{k}");
        for (a, b) in r.iter().zip(s) {
            assert!(
                a == b || *a == b * 10 || (*b == 24 && *a == 768) || (*b == 96 && *a == 3072),
                "{k}: real {r:?}, ours {s:?}"
            );
        }
    }
    assert_eq!(real_channels, vec![320, 640, 1280, 1280]);
}

#[test]
fn sd15_vae_decoder_key_layout_and_shapes() {
    let (cfg_json, keys) = sd15("keys-sd15-vae.json");
    let cfg: AutoencoderKlConfig = serde_json::from_value(cfg_json).unwrap();
    let vs = VarStore::new(Device::Cpu);
    VaeDecoder::new(&vs.root(), &cfg).unwrap();
    let ours: BTreeMap<String, Vec<i64>> = vs
        .variables()
        .into_iter()
        .map(|(k, v)| (k, v.size()))
        .collect();
    let decoder: BTreeMap<String, Vec<i64>> = keys
        .into_iter()
        .filter(|(k, _)| k.starts_with("decoder.") || k.starts_with("post_quant_conv."))
        .collect();
    assert_eq!(ours, decoder);
}

#[test]
fn config_errors_are_clear() {
    let text = std::fs::read_to_string(fixture("tiny/unet/config.json")).unwrap();
    let mut v: Value = serde_json::from_str(&text).unwrap();
    v.as_object_mut().unwrap().remove("cross_attention_dim");
    let e = UNet2DConditionConfig::from_json(&v.to_string()).unwrap_err();
    assert!(format!("{e:#}").contains("cross_attention_dim"), "{e:#}");
    let mut v: Value = serde_json::from_str(&text).unwrap();
    v["class_embed_type"] = Value::from("timestep");
    let e = UNet2DConditionConfig::from_json(&v.to_string()).unwrap_err();
    assert!(format!("{e:#}").contains("class embeddings"), "{e:#}");
    let mut v: Value = serde_json::from_str(&text).unwrap();
    v["attention_head_dim"] = Value::from(3);
    let e = UNet2DConditionConfig::from_json(&v.to_string()).unwrap_err();
    assert!(format!("{e:#}").contains("attention heads"), "{e:#}");
}

fn fixture_unet() -> (VarStore, UNet2DCondition) {
    let text = std::fs::read_to_string(fixture("tiny/unet/config.json")).unwrap();
    let cfg = UNet2DConditionConfig::from_json(&text).unwrap();
    let mut vs = VarStore::new(Device::Cpu);
    let unet = UNet2DCondition::new(&vs.root(), &cfg).unwrap();
    load_weights(
        &mut vs,
        &fixture("tiny/unet/diffusion_pytorch_model.safetensors"),
        &|n| n.to_string(),
    )
    .unwrap();
    (vs, unet)
}

/// A LoRA written by diffusers' `save_lora_weights` from a peft adapter (make_lora_fixture.py):
/// imported here it gives diffusers' adapted output; exported again it has exactly diffusers'
/// tensor names and shapes. With `DIVRL_WRITE_LORA_EXPORT=<dir>` the export and its expected
/// output are also written there, for `make_lora_fixture.py --check <dir>/lora`.
#[test]
fn lora_written_by_diffusers_imports_and_re_exports() {
    use divrl::models::sd::lora_diffusers::{
        apply_lora, export_peft, read_lora, read_safetensors_metadata,
    };
    let (_vs, mut unet) = fixture_unet();
    let layers = read_lora(&fixture("lora_peft")).unwrap();
    assert_eq!(layers.len(), 32);
    // No adapter_config.json there: alpha from the safetensors metadata.
    assert!(layers.values().all(|l| l.alpha == 6.0 && l.rank() == 2));
    let lvs = VarStore::new(Device::Cpu);
    assert_eq!(apply_lora(&mut unet, &lvs.root(), &layers).unwrap(), 32);
    let e = expected();
    let want = &Tensor::read_safetensors(fixture("lora_expected.safetensors")).unwrap()[0].1;
    let out = tch::no_grad(|| unet.forward(&e["unet_x"], &e["unet_t"], &e["unet_ctx"]));
    let scale = want.abs().max().double_value(&[]);
    let d = max_abs(&out, want);
    eprintln!("unet + diffusers LoRA: max |Δ| = {d:.3e} (scale {scale:.3})");
    assert!(d < 1e-4 * scale.max(1.0), "max |Δ| = {d} (scale {scale})");
    assert!(
        max_abs(&out, &e["unet_out"]) > 1e-3,
        "the LoRA changes the output"
    );

    let tmp = tempfile::tempdir().unwrap();
    let dir = match std::env::var_os("DIVRL_WRITE_LORA_EXPORT") {
        Some(d) => PathBuf::from(d),
        None => tmp.path().to_path_buf(),
    };
    let file = export_peft(&unet, &dir.join("lora")).unwrap();
    let shapes = |p: &Path| -> BTreeMap<String, Vec<i64>> {
        Tensor::read_safetensors(p)
            .unwrap()
            .into_iter()
            .map(|(k, t)| (k, t.size()))
            .collect()
    };
    assert_eq!(
        shapes(&file),
        shapes(&fixture("lora_peft/pytorch_lora_weights.safetensors"))
    );
    let theirs =
        read_safetensors_metadata(&fixture("lora_peft/pytorch_lora_weights.safetensors")).unwrap();
    let ours = read_safetensors_metadata(&file).unwrap();
    assert_eq!(ours["format"], theirs["format"]);
    let (o, t): (Value, Value) = (
        serde_json::from_str(&ours["lora_adapter_metadata"]).unwrap(),
        serde_json::from_str(&theirs["lora_adapter_metadata"]).unwrap(),
    );
    assert_eq!(o["unet.r"], t["unet.r"]);
    assert_eq!(o["unet.target_modules"].as_array().unwrap().len(), 4);
    for m in t["unet.target_modules"].as_array().unwrap() {
        assert!(o["unet.target_modules"].as_array().unwrap().contains(m));
    }
    divrl::config::write_safetensors_atomic(
        &dir.join("expected_out.safetensors"),
        &[("out".to_string(), out)],
    )
    .unwrap();
}

/// The DDIM transitions of the policy are diffusers' `DDIMScheduler.step` with eta = 1
/// (make_scheduler_fixture.py): same timesteps, same mean and standard deviation.
#[test]
fn ddim_steps_match_diffusers_scheduler() {
    use divrl::models::sd::pipeline::SdPolicy;
    use divrl::models::sd::scheduler::{SchedulerConfig, SdScheduler};
    use divrl::models::sd::tiny::sd15_scheduler_config;
    use divrl::schedule::Transitions;
    let cfg: SchedulerConfig = serde_json::from_value(sd15_scheduler_config()).unwrap();
    let s = SdScheduler::new(&cfg).unwrap();
    let e: BTreeMap<String, Tensor> =
        Tensor::read_safetensors(fixture("scheduler_expected.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let ts = s.timesteps(4).unwrap();
    let want: Vec<i64> = Vec::try_from(&e["timesteps"]).unwrap();
    assert_eq!(&ts[..4], want.as_slice());
    assert_eq!(ts[4], -1);
    let sampler = SdPolicy::sampler(4, 1.0, 1.0);
    for i in 0..4 {
        let x = &e[&format!("x_{i}")];
        let rows =
            Transitions::uniform(&s.sched, ts[i], ts[i + 1], x.size()[0] as usize, x.device());
        let g = rows.gaussian_from_eps(&sampler, x, &e[&format!("eps_{i}")]);
        let prev = g.sample(&e[&format!("noise_{i}")]);
        let d = max_abs(&prev, &e[&format!("prev_{i}")]);
        eprintln!("ddim step {i}: max |Δ| = {d:.3e}");
        assert!(d < 1e-5, "step {i}: max |Δ| = {d}");
    }
    // set_alpha_to_one = true would make the last step deterministic: refused.
    let mut c2 = cfg.clone();
    c2.set_alpha_to_one = true;
    assert!(SdScheduler::new(&c2).unwrap().timesteps(4).is_err());
}

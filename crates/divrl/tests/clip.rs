//! CLIP in tch against Hugging Face transformers (fixtures/clip/make_fixture.py): a tiny random
//! model in the real key layout, its tokenizer, and the key names and shapes of the real
//! ViT-B/32 and ViT-L/14 checkpoints.
use divrl::models::clip::{load_clip, preprocess, Clip, ClipConfig, CLIP_MEAN, CLIP_STD};
use divrl::models::clip_tokenizer::ClipTokenizer;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{nn::VarStore, Device, Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/clip")
        .join(name)
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("tiny_expected.json")).unwrap()).unwrap()
}

fn matrix(v: &Value) -> Tensor {
    let rows: Vec<Vec<f32>> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    let (n, d) = (rows.len() as i64, rows[0].len() as i64);
    Tensor::from_slice(&rows.concat()).view([n, d])
}

#[test]
fn tokenizer_matches_hugging_face() {
    let tok = ClipTokenizer::from_file(&fixture("tiny/tokenizer.json"), 77).unwrap();
    let e = expected();
    for (p, ids) in e["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .zip(e["ids"].as_array().unwrap())
    {
        let want: Vec<i64> = ids
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect();
        let got = tok.encode(p.as_str().unwrap()).unwrap();
        assert_eq!(got, want, "prompt {p}");
    }
}

#[test]
fn tiny_model_matches_hugging_face() {
    let clip = load_clip(&fixture("tiny"), None, Device::Cpu).unwrap();
    let e = expected();
    let px: Vec<f32> = e["pixels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    let px = Tensor::from_slice(&px).view([2, 3, 32, 32]);
    let img = tch::no_grad(|| clip.model.image_embeds(&px)).unwrap();
    let want = matrix(&e["image_embeds"]);
    let d = (&img - &want).abs().max().double_value(&[]);
    assert!(d < 1e-5, "image embeds differ by {d}");
    let n = e["text_prompt_count"].as_i64().unwrap() as usize;
    let prompts: Vec<String> = e["prompts"].as_array().unwrap()[..n]
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    let txt = clip.encode_texts(&prompts).unwrap();
    let want_t = matrix(&e["text_embeds"]);
    let d = (&txt - &want_t).abs().max().double_value(&[]);
    assert!(d < 1e-5, "text embeds differ by {d}");
    // Different prompts give different embeddings (the pooling position is right).
    assert!((txt.get(0) - txt.get(1)).abs().max().double_value(&[]) > 1e-3);
    // logits_per_image = exp(logit_scale) · cos.
    let norm = |t: &Tensor| t / t.norm_scalaropt_dim(2, [-1i64], true);
    let logits = norm(&img).matmul(&norm(&txt).tr()) * clip.model.logit_scale.exp();
    let d = (logits - matrix(&e["logits_per_image"]))
        .abs()
        .max()
        .double_value(&[]);
    assert!(d < 1e-4, "logits differ by {d}");
}

#[test]
fn zero_shot_and_feature_extractor() {
    let clip = load_clip(&fixture("tiny"), None, Device::Cpu).unwrap();
    let imgs = Tensor::rand([3, 3, 40, 48], (Kind::Float, Device::Cpu));
    let prompts = vec![
        "a photo of a man".to_string(),
        "a photo of a woman".to_string(),
    ];
    let p = clip.zero_shot(&imgs, &prompts).unwrap();
    assert_eq!(p.size(), [3, 2]);
    let sums = p.sum_dim_intlist(&[1i64][..], false, Kind::Float);
    assert!((sums - 1.0).abs().max().double_value(&[]) < 1e-5);
    assert!(clip.zero_shot(&imgs, &prompts[..1]).is_err());
    let ext = divrl::features::load_extractor("clip", Some(&fixture("tiny")), Device::Cpu).unwrap();
    assert_eq!(ext.dim(), 16);
    let f = ext.forward(&imgs).unwrap().features;
    assert_eq!(f.size(), [3, 16]);
    let direct = clip.encode_images(&imgs).unwrap();
    assert!((f - direct).abs().max().double_value(&[]) < 1e-6);
}

#[test]
fn preprocessing_is_clip_s() {
    // A constant image maps to (v − mean) / std, whatever its size and aspect.
    let x = Tensor::full([1, 3, 50, 80], 0.5, (Kind::Float, Device::Cpu));
    let p = preprocess(&x, 224).unwrap();
    assert_eq!(p.size(), [1, 3, 224, 224]);
    for c in 0..3 {
        let want = (0.5 - CLIP_MEAN[c]) / CLIP_STD[c];
        let got = p.get(0).get(c as i64);
        assert!((got - want).abs().max().double_value(&[]) < 1e-4);
    }
    // Centre crop: a left/right split wide image keeps its centre columns.
    let wide = Tensor::zeros([1, 1, 10, 30], (Kind::Float, Device::Cpu));
    let _ = wide.narrow(3, 10, 10).fill_(1.0);
    let p = preprocess(&wide, 10).unwrap();
    let v = (p.get(0).get(0) * CLIP_STD[0] + CLIP_MEAN[0])
        .mean(Kind::Float)
        .double_value(&[]);
    assert!(v > 0.95, "centre should be the bright band, mean {v}");
    assert!(preprocess(&Tensor::zeros([1, 2, 8, 8], (Kind::Float, Device::Cpu)), 8).is_err());
}

fn check_layout(cfg: &ClipConfig, keys_file: &str) {
    let keys: BTreeMap<String, Vec<i64>> =
        serde_json::from_str(&std::fs::read_to_string(fixture(keys_file)).unwrap()).unwrap();
    let vs = VarStore::new(Device::Cpu);
    let _m = Clip::new(&vs.root(), cfg).unwrap();
    let vars = vs.variables();
    for (name, t) in &vars {
        let shape = keys
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not a key of {keys_file}"));
        assert_eq!(&t.size(), shape, "{name}");
    }
    for (k, shape) in &keys {
        if k.ends_with("position_ids") {
            continue; // an index buffer, not a weight
        }
        assert!(
            vars.contains_key(k),
            "{keys_file} key {k} {shape:?} is not loaded"
        );
    }
}

#[test]
fn real_key_layout_vit_b_32() {
    check_layout(&ClipConfig::vit_b_32(), "keys-vit-b-32.json");
}

#[test]
fn real_key_layout_vit_l_14() {
    check_layout(&ClipConfig::vit_l_14(), "keys-vit-l-14.json");
}

#[test]
fn loader_errors() {
    let dir = tempfile::tempdir().unwrap();
    assert!(load_clip(&dir.path().join("none"), None, Device::Cpu).is_err());
    let e = load_clip(dir.path(), None, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("config.json"), "{e}");
    std::fs::copy(fixture("tiny/config.json"), dir.path().join("config.json")).unwrap();
    let e = load_clip(dir.path(), None, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("model.safetensors"), "{e}");
    // Weights of another architecture: a shape error, not a panic.
    let e = load_clip(&fixture("tiny"), Some("vit-b-32"), Device::Cpu).map(|_| ());
    assert!(
        e.is_ok(),
        "config.json takes precedence over the architecture name"
    );
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    std::fs::copy(
        fixture("tiny/model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let e = load_clip(dir.path(), Some("vit-b-32"), Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("shape"), "{e}");
    assert!(ClipConfig::named("vit-h-14").is_err());
    let tok = ClipTokenizer::from_file(&fixture("tiny/tokenizer.json"), 77).unwrap();
    assert_eq!(tok.encode("hello").unwrap().len(), 77);
    std::fs::write(dir.path().join("bad.json"), "{\"model\": {}}").unwrap();
    assert!(ClipTokenizer::from_file(&dir.path().join("bad.json"), 77).is_err());
}

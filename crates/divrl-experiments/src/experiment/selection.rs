//! Table 1: post-sampling selection — the most (or least) diverse M of O candidates per set,
//! by each reward, against random subsets.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use divrl::config::{read_safetensors, write_atomic, write_safetensors_atomic};
use divrl::eval::{EvalOptions, EvalReport};
use divrl::features::to_features;
use divrl::rl::build_finetuner;
use divrl::rng::SplitMix64;
use divrl::tch::{Kind, Tensor};
use divrl_report::Series;
use divrl_reward::select::{select_sets, Criterion, Method};
use divrl_reward::{DiversityReward, RewardKind, RewardSpec};

use super::table::{finish, sizes_of, svg};
use super::{paper_table1, CellResult, Ctx, ExperimentTable};
use crate::files::{read_json, write_json};

pub(super) fn selection(ctx: &Ctx) -> Result<(ExperimentTable, Vec<(String, String)>)> {
    let w = ctx.opts.guidance.unwrap_or(4.0);
    let s_per_class = ctx
        .opts
        .sets_per_class
        .unwrap_or(if ctx.opts.quick { 4 } else { 20 });
    let (o, m) = (10usize, 5usize);
    if s_per_class == 0 {
        bail!("--sets-per-class must be >= 1");
    }
    let cfg = ctx.config(RewardKind::Mmd, w)?;
    ctx.pb.set_length(4);
    ctx.pb
        .set_message("loading the base model, ϕ and the pools");
    let t = build_finetuner(&cfg, true, false)?;
    let classes = t.classes.clone();
    let k = classes.len();
    let n_per_class = s_per_class * o;
    ctx.pb.inc(1);
    // Candidates: S·O images per class from the evaluation noise, interleaved by class.
    let cand = ctx.cells_dir.join("candidates.safetensors");
    let (feats, logits) = if cand.exists() {
        let m: BTreeMap<String, Tensor> = read_safetensors(&cand)?.into_iter().collect();
        let f = m
            .get("features")
            .context("candidates file has no features")?;
        if f.size()[0] as usize != n_per_class * k {
            bail!(
                "{} holds {} candidates, this run needs {}: use another --out",
                cand.display(),
                f.size()[0],
                n_per_class * k
            );
        }
        (
            f.shallow_clone(),
            m.get("logits").map(|l| l.shallow_clone()),
        )
    } else {
        ctx.pb.set_message(format!(
            "sampling {} candidates at guidance {w}",
            n_per_class * k
        ));
        let imgs = t.eval_images(n_per_class, w)?;
        let (f, l) = t.features(&imgs)?;
        let mut v = vec![("features".to_string(), f.to_kind(Kind::Float))];
        if let Some(l) = &l {
            v.push(("logits".to_string(), l.to_kind(Kind::Float)));
        }
        write_safetensors_atomic(&cand, &v)?;
        let grid = crate::grids::grid_png(&imgs, k, o.min(n_per_class))?;
        write_atomic(&ctx.opts.out.join("candidates-first-set.png"), &grid)?;
        (f.to_kind(Kind::Float), l.map(|l| l.to_kind(Kind::Float)))
    };
    ctx.pb.inc(1);
    let all = to_features("candidate features", &feats)?;
    let eval_feats = t
        .eval_features()
        .context("no evaluation set")?
        .shallow_clone();
    // Per class: the candidate indices in set order (set s = reps s·O .. (s+1)·O).
    let class_idx: Vec<Vec<usize>> = (0..k)
        .map(|ci| (0..n_per_class).map(|r| r * k + ci).collect())
        .collect();
    let gp_spec = RewardSpec::new(RewardKind::GpMi);
    let mut cells = Vec::new();
    let criteria: [(&str, Option<(RewardKind, Criterion)>); 6] = [
        ("random", None),
        ("max-mmd", Some((RewardKind::Mmd, Criterion::Max))),
        ("max-gp-mi", Some((RewardKind::GpMi, Criterion::Max))),
        ("min-mmd", Some((RewardKind::Mmd, Criterion::Min))),
        ("min-gp-mi", Some((RewardKind::GpMi, Criterion::Min))),
        ("all-10", None),
    ];
    ctx.pb.set_message("selecting");
    for (name, crit) in criteria {
        let p = ctx.cell_json(name);
        if p.exists() {
            cells.push(read_json::<CellResult>(&p)?);
            continue;
        }
        let t0 = Instant::now();
        let mut chosen: Vec<usize> = Vec::new();
        let mut rng = SplitMix64(0x5E1E_C7ED);
        for (ci, idx) in class_idx.iter().enumerate() {
            let c = classes[ci];
            match (name, crit) {
                ("all-10", _) => chosen.extend(idx),
                (_, None) => {
                    for set in idx.chunks(o) {
                        let mut s = set.to_vec();
                        rng.shuffle(&mut s);
                        chosen.extend(&s[..m]);
                    }
                }
                (_, Some((kind, criterion))) => {
                    let mmd = t.reward_of(c).context("no reward for class")?;
                    let gp;
                    let reward: &DiversityReward = if kind == RewardKind::Mmd {
                        mmd
                    } else {
                        gp = DiversityReward::new(&gp_spec, mmd.reference().clone())?;
                        &gp
                    };
                    let cf = all.select_rows(idx);
                    let sel = select_sets(reward, &cf, o, m, criterion, Method::Exhaustive)?;
                    for (s, sl) in sel.iter().enumerate() {
                        chosen.extend(sl.subset.iter().map(|&j| idx[s * o + j]));
                    }
                }
            }
        }
        let it = Tensor::from_slice(&chosen.iter().map(|&i| i as i64).collect::<Vec<_>>());
        let report = divrl::eval::evaluate(
            t.phi_name(),
            &feats.index_select(0, &it),
            &eval_feats,
            logits.as_ref().map(|l| l.index_select(0, &it)).as_ref(),
            None,
            EvalOptions::default(),
        )?;
        let r = CellResult {
            name: name.into(),
            params: [("criterion".to_string(), name.to_string())].into(),
            report,
            epochs: 0,
            train_seconds: 0.0,
            seconds: t0.elapsed().as_secs_f64(),
            set_reward_first: None,
            set_reward_last: None,
        };
        write_json(&p, &r)?;
        cells.push(r);
    }
    // The noise scale of a row: random selection with 10 other seeds (cheap: features cached).
    let spread_file = ctx.cells_dir.join("random-spread.json");
    let spread: BTreeMap<String, f64> = if spread_file.exists() {
        read_json(&spread_file)?
    } else {
        let mut vals: Vec<[f64; 3]> = Vec::new();
        for seed in 1..=10u64 {
            let mut rng = SplitMix64(0x5E1E_C7ED ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut chosen: Vec<i64> = Vec::new();
            for idx in &class_idx {
                for set in idx.chunks(o) {
                    let mut s = set.to_vec();
                    rng.shuffle(&mut s);
                    chosen.extend(s[..m].iter().map(|&i| i as i64));
                }
            }
            let it = Tensor::from_slice(&chosen);
            let g = to_features("selected features", &feats.index_select(0, &it))?;
            let r = to_features("held-out features", &eval_feats)?;
            let p = divrl_reward::metrics::prdc(&g, &r, 3)?;
            vals.push([p.recall, p.precision, divrl_reward::metrics::fid(&g, &r)?]);
        }
        let sd = |j: usize| {
            let mean = vals.iter().map(|v| v[j]).sum::<f64>() / vals.len() as f64;
            (vals.iter().map(|v| (v[j] - mean).powi(2)).sum::<f64>() / (vals.len() - 1) as f64)
                .sqrt()
        };
        let sp: BTreeMap<String, f64> = [
            ("recall_sd", sd(0)),
            ("precision_sd", sd(1)),
            ("fid_sd", sd(2)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        write_json(&spread_file, &sp)?;
        sp
    };
    ctx.pb.inc(2);
    let sizes = sizes_of(
        &cfg,
        &[
            ("guidance", w.to_string()),
            ("candidate sets per class (S)", s_per_class.to_string()),
            ("O (candidates per set)", o.to_string()),
            ("M (selected per set)", m.to_string()),
            (
                "N (reference images per class)",
                cfg.ref_per_class.to_string(),
            ),
            (
                "selected images per row",
                format!("{} (all-10: {})", s_per_class * m * k, n_per_class * k),
            ),
            ("evaluation images per class", "—".into()),
            (
                "noise scale: std of random selection over 10 seeds",
                format!(
                    "Recall {:.4}, Precision {:.4}, FID {:.2}",
                    spread["recall_sd"], spread["precision_sd"], spread["fid_sd"]
                ),
            ),
        ],
    );
    let pts = |f: fn(&EvalReport) -> f64| -> Vec<Series> {
        cells
            .iter()
            .map(|c| Series::new(c.name.clone(), vec![(f(&c.report), c.report.fid)]).with_markers())
            .collect()
    };
    let plots = vec![
        (
            "recall-vs-fid".to_string(),
            svg(
                "Recall vs FID per criterion",
                "Recall",
                "FID",
                pts(|r| r.recall),
            )?,
        ),
        (
            "precision-vs-fid".to_string(),
            svg(
                "Precision vs FID per criterion",
                "Precision",
                "FID",
                pts(|r| r.precision),
            )?,
        ),
    ];
    Ok((finish(ctx, sizes, cells, paper_table1())?, plots))
}

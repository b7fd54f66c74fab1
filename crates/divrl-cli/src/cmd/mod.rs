//! One module per verb: `Args` (clap) and `run`.

pub mod audit;
pub mod demo;
pub mod eval;
pub mod experiment;
pub mod features;
pub mod finetune;
pub mod metrics;
pub mod reward;
pub mod sample;
pub mod sd_sample;
pub mod select;
pub mod train_base;
pub mod train_classifier;

/// An error chain on one line: "outer: inner: innermost".
pub fn one_line(err: &anyhow::Error) -> String {
    let mut s = String::new();
    for (i, cause) in err.chain().enumerate() {
        if i > 0 {
            s.push_str(": ");
        }
        s.push_str(&cause.to_string());
    }
    s.replace('\n', " ")
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `--device` and `--threads` of the verbs that compute with libtorch (flatten into their `Args`).
#[derive(clap::Args, Debug, Clone)]
pub struct ComputeOpts {
    /// cpu, cuda, cuda:N or auto
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// CPU threads for libtorch (0 = one per core)
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

impl ComputeOpts {
    /// Sets libtorch's thread count and returns the device to run on.
    pub fn device(&self) -> anyhow::Result<divrl::tch::Device> {
        setup_device(&self.device, self.threads)
    }
}

/// `--device` and `--threads` of the verbs whose settings come from a preset or a config file
/// (`finetune`, `demo`, `experiment`): a flag left out keeps the setting's value.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ComputeOverrides {
    /// cpu, cuda, cuda:N or auto [default: auto]
    #[arg(long)]
    pub device: Option<String>,
    /// libtorch CPU threads, 0 = one per core [default: 0]
    #[arg(long)]
    pub threads: Option<usize>,
}

impl ComputeOverrides {
    /// Lays the flags that were given over a config's `device` and `threads`.
    pub fn apply(&self, device: &mut String, threads: &mut usize) {
        if let Some(d) = &self.device {
            device.clone_from(d);
        }
        if let Some(t) = self.threads {
            *threads = t;
        }
    }
}

/// Sets libtorch's thread count (0 = one per core) and parses `cpu`, `cuda`, `cuda:N` or `auto`.
pub fn setup_device(spec: &str, threads: usize) -> anyhow::Result<divrl::tch::Device> {
    divrl::device::set_threads(threads);
    divrl::device::parse_device(spec)
}

/// Reward-kernel options shared by `reward` and `select`.
#[derive(clap::Args, Debug, Clone)]
pub struct RewardOpts {
    /// Which Diversity Reward
    #[arg(long, value_enum, default_value = "mmd")]
    pub kind: KindArg,
    /// Polynomial kernel degree d (mmd) [default: 3]
    #[arg(long)]
    pub degree: Option<u32>,
    /// Polynomial kernel scale γ (mmd) [default: 1/D]
    #[arg(long)]
    pub gamma: Option<f64>,
    /// Polynomial kernel offset c0 (mmd) [default: 1]
    #[arg(long)]
    pub coef0: Option<f64>,
    /// RBF bandwidth σ (gp-mi, mmd with --mmd-kernel rbf) [default: --sigma-scale × median pairwise distance of the references]
    #[arg(long)]
    pub sigma: Option<f64>,
    /// Multiple of the median reference distance used as σ when --sigma is not given
    #[arg(long, default_value_t = 1.0)]
    pub sigma_scale: f64,
    /// Kernel of the mmd reward: polynomial (KID) or rbf
    #[arg(long, default_value = "polynomial")]
    pub mmd_kernel: divrl_reward::MmdKernel,
    /// Jitter λ added to kernel diagonals (gp-mi)
    #[arg(long, default_value_t = 1e-6)]
    pub jitter: f64,
    /// Nearest-neighbour rank of the ball radius (recall)
    #[arg(long, default_value_t = 3)]
    pub k: usize,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum KindArg {
    Mmd,
    GpMi,
    Recall,
}

impl RewardOpts {
    pub fn spec(&self) -> divrl_reward::RewardSpec {
        divrl_reward::RewardSpec {
            kind: match self.kind {
                KindArg::Mmd => divrl_reward::RewardKind::Mmd,
                KindArg::GpMi => divrl_reward::RewardKind::GpMi,
                KindArg::Recall => divrl_reward::RewardKind::Recall,
            },
            degree: self.degree,
            gamma: self.gamma,
            coef0: self.coef0,
            sigma: self.sigma,
            sigma_scale: self.sigma_scale,
            mmd_kernel: self.mmd_kernel,
            jitter: self.jitter,
            k: self.k,
        }
    }
}

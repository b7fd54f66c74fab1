//! One module per verb that computes with libtorch: `Args` (clap) and `run`. The maths verbs
//! (`reward`, `select`, `metrics`) live in `divrl_cli`, which this binary embeds.

pub mod audit;
pub mod demo;
pub mod eval;
pub mod experiment;
pub mod features;
pub mod finetune;
pub mod launch;
pub mod sample;
pub mod sd_sample;
pub mod train_base;
pub mod train_classifier;

pub use divrl_cli::print_json;

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

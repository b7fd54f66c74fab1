//! `divrl`: diversity-oriented RL fine-tuning of diffusion models, and the maths around it.
//!
//! This binary links no libtorch. It runs the maths verbs (`reward`, `select`, `metrics`) itself,
//! so a script calling them thousands of times pays milliseconds, not libtorch's start-up; every
//! other verb, and `--help` / `--version`, is handed to `divrl-torch` in the same folder (the
//! process is replaced, so exit codes, output and signals are that binary's own).
//! Errors print one line (`divrl: error: ...`) on stderr and exit with code 2.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use divrl_cli::MathsCommand;

/// The maths verbs alone; `divrl-torch` declares the full command with the same verbs.
#[derive(Parser)]
#[command(
    name = "divrl",
    bin_name = "divrl",
    version,
    about = divrl_cli::ABOUT
)]
struct Maths {
    #[command(subcommand)]
    command: MathsCommand,
}

/// The binary that runs the libtorch verbs.
const TORCH_BIN: &str = "divrl-torch";

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let verb = args.get(1).and_then(|a| a.to_str());
    if verb.is_some_and(MathsCommand::has_subcommand) {
        return match Maths::try_parse_from(&args) {
            Ok(cli) => divrl_cli::finish(cli.command.run()),
            Err(err) => divrl_cli::parse_error(err),
        };
    }
    hand_over(&args[1.min(args.len())..])
}

/// Replaces this process with `divrl-torch args…` (argv[0] stays `divrl`).
fn hand_over(args: &[OsString]) -> ExitCode {
    let torch = match torch_binary() {
        Ok(p) => p,
        Err(msg) => return divrl_cli::fail(&msg),
    };
    let mut cmd = std::process::Command::new(&torch);
    cmd.args(args);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let err = cmd.arg0("divrl").exec();
        divrl_cli::fail(&format!("cannot run {}: {err}", torch.display()))
    }
    #[cfg(not(unix))]
    match cmd.status() {
        Ok(status) => ExitCode::from(status.code().unwrap_or(2).clamp(0, 255) as u8),
        Err(err) => divrl_cli::fail(&format!("cannot run {}: {err}", torch.display())),
    }
}

/// `divrl-torch` beside this executable (symbolic links resolved).
fn torch_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .map_err(|e| format!("cannot locate the divrl executable: {e}"))?;
    let torch = exe.with_file_name(format!("{TORCH_BIN}{}", std::env::consts::EXE_SUFFIX));
    if !torch.is_file() {
        return Err(format!(
            "this verb needs {} beside divrl (the libtorch verbs live there); build both: cargo build --release -p divrl-cli -p divrl-torch-cli",
            torch.display()
        ));
    }
    Ok(torch)
}

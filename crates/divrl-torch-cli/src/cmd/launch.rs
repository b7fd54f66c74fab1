//! `--nproc N`: starts N local ranks of a data-parallel run the way torchrun does (this binary
//! with the same arguments, and `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`,
//! `MASTER_ADDR`, `MASTER_PORT` in each one's environment), waits for them, and stops the others
//! as soon as one fails.
use std::ffi::OsString;
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// The command line without `--nproc N` / `--nproc=N`.
pub fn without_nproc(args: &[OsString]) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut skip_value = false;
    for a in args {
        if skip_value {
            skip_value = false;
            continue;
        }
        match a.to_str() {
            Some("--nproc") => skip_value = true,
            Some(s) if s.starts_with("--nproc=") => {}
            _ => out.push(a.clone()),
        }
    }
    out
}

/// A TCP port on the loopback interface that nothing listens on now.
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0))
        .context("finding a free port for the ranks' rendezvous")?;
    Ok(l.local_addr()?.port())
}

/// Runs `nproc` ranks of this process's command (minus `--nproc`) on this machine; each gets
/// `threads` libtorch threads when `threads` is given (the cores split evenly otherwise).
pub fn run_local_ranks(nproc: usize, threads_given: bool) -> Result<()> {
    if nproc == 0 {
        bail!("--nproc must be at least 1");
    }
    if std::env::var_os("RANK").is_some() && std::env::var_os("WORLD_SIZE").is_some() {
        bail!("--nproc starts the ranks itself: do not combine it with RANK/WORLD_SIZE (torchrun)");
    }
    let exe = std::env::current_exe().context("locating this executable")?;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let mut args = without_nproc(&args);
    if !threads_given {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        args.push("--threads".into());
        args.push((cores / nproc).max(1).to_string().into());
    }
    let port = free_port()?;
    let mut children: Vec<Option<Child>> = Vec::with_capacity(nproc);
    for rank in 0..nproc {
        let mut c = Command::new(&exe);
        c.args(&args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", nproc.to_string())
            .env("LOCAL_WORLD_SIZE", nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string());
        if std::env::var_os("TORCH_CPP_LOG_LEVEL").is_none() {
            c.env("TORCH_CPP_LOG_LEVEL", "ERROR");
        }
        match c.spawn() {
            Ok(child) => children.push(Some(child)),
            Err(e) => {
                stop(&mut children);
                bail!("starting rank {rank} of {nproc}: {e}");
            }
        }
    }
    let mut left = nproc;
    while left > 0 {
        for rank in 0..nproc {
            let Some(child) = children[rank].as_mut() else {
                continue;
            };
            if let Some(status) = child.try_wait()? {
                children[rank] = None;
                left -= 1;
                if !status.success() {
                    stop(&mut children);
                    let how = match status.code() {
                        Some(c) => format!("exit code {c}"),
                        None => "a signal".to_string(),
                    };
                    bail!("rank {rank} of {nproc} failed ({how}); the other ranks were stopped");
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Kills and reaps the ranks still running.
fn stop(children: &mut [Option<Child>]) {
    for c in children.iter_mut().flatten() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nproc_is_removed_in_both_spellings() {
        let a: Vec<OsString> = [
            "finetune",
            "--nproc",
            "2",
            "--epochs",
            "3",
            "--nproc=4",
            "--x",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let b: Vec<String> = without_nproc(&a)
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        assert_eq!(b, ["finetune", "--epochs", "3", "--x"]);
    }
}

//! Data-parallel collectives for divrl on libtorch's own c10d engine: a `TCPStore` rendezvous
//! (rank 0 serves it, every rank connects, the way torchrun's `MASTER_ADDR`/`MASTER_PORT` work)
//! and c10d's `StoreCollectives` (barrier, all-gather) on top of it, every call bounded by a
//! timeout so that a rank that dies or hangs makes the others fail with a clear error instead of
//! hanging.
//!
//! What a data-parallel RL run exchanges is small and needs to be identical on every rank: the
//! ϕ-features of an epoch's images (the set reward needs the whole set) and the LoRA gradients
//! (tens of thousands of floats). Every exchange is an all-gather, and what is added up is added
//! on every rank in the same order ([`Comm::all_sum_f32`]: rank order), so the sum is
//! bit-identical on every rank, whatever the network did.
//!
//! ```no_run
//! # fn main() -> Result<(), divrl_dist::DistError> {
//! let launch = divrl_dist::Launch::from_env()?; // RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
//! let mut comm = divrl_dist::Comm::connect(&launch, std::time::Duration::from_secs(60))?;
//! let mut grads = vec![0.5f32; 4];
//! comm.all_sum_f32(&mut grads)?; // the sum over ranks, the same bits everywhere
//! # Ok(()) }
//! ```
use std::ffi::{c_char, CStr, CString};
use std::time::Duration;

mod ffi {
    use std::ffi::c_char;

    #[repr(C)]
    pub struct RawComm {
        _private: [u8; 0],
    }

    extern "C" {
        pub fn divrl_comm_new(
            host: *const c_char,
            port: u16,
            rank: i32,
            world: i32,
            serve: i32,
            timeout_ms: i64,
            out: *mut *mut RawComm,
            err: *mut *mut c_char,
        ) -> i32;
        pub fn divrl_comm_free(comm: *mut RawComm);
        pub fn divrl_comm_finish(comm: *mut RawComm, wait_ms: i64, err: *mut *mut c_char) -> i32;
        pub fn divrl_comm_free_buffer(p: *mut std::ffi::c_void);
        pub fn divrl_comm_barrier(
            comm: *mut RawComm,
            key: *const c_char,
            err: *mut *mut c_char,
        ) -> i32;
        #[allow(clippy::too_many_arguments)]
        pub fn divrl_comm_all_gather(
            comm: *mut RawComm,
            key: *const c_char,
            data: *const u8,
            len: usize,
            out: *mut *mut u8,
            out_len: *mut usize,
            lens: *mut usize,
            err: *mut *mut c_char,
        ) -> i32;
    }
}

/// What went wrong in a collective or in the launch environment.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// A c10d call failed: a peer did not answer within the timeout, a connection was refused
    /// or closed. `what` names the call, `message` is c10d's.
    #[error("rank {rank} of {world}: {what} failed: {message}")]
    C10d {
        rank: usize,
        world: usize,
        what: String,
        message: String,
    },
    /// The launch environment (torchrun's variables) is incomplete or malformed.
    #[error("{0}")]
    Launch(String),
    /// Ranks disagreed on the shape of a collective's data.
    #[error("rank {rank} of {world}: {message}")]
    Mismatch {
        rank: usize,
        world: usize,
        message: String,
    },
}

/// Where this process sits in a run: torchrun's environment, or one process alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// Whether a launcher already serves the store at `MASTER_ADDR:MASTER_PORT` (torchrun's
    /// agent: `TORCHELASTIC_USE_AGENT_STORE=True`), so that rank 0 connects to it like the
    /// others instead of serving its own.
    pub agent_store: bool,
}

impl Launch {
    /// One process, no peers.
    pub fn single() -> Self {
        Self {
            rank: 0,
            world: 1,
            local_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: 29500,
            agent_store: false,
        }
    }

    /// torchrun's variables: `RANK`, `WORLD_SIZE`, `LOCAL_RANK` (default: `RANK`),
    /// `MASTER_ADDR` (default 127.0.0.1), `MASTER_PORT` (default 29500). Without `WORLD_SIZE`
    /// (or with 1) the process runs alone.
    pub fn from_env() -> Result<Self, DistError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// [`Launch::from_env`] over any variable lookup (tests).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, DistError> {
        let number = |key: &str| -> Result<Option<usize>, DistError> {
            match var(key) {
                None => Ok(None),
                Some(v) => v.trim().parse().map(Some).map_err(|_| {
                    DistError::Launch(format!("{key}={v:?} is not a non-negative integer"))
                }),
            }
        };
        let world = number("WORLD_SIZE")?.unwrap_or(1);
        if world == 0 {
            return Err(DistError::Launch("WORLD_SIZE must be >= 1".into()));
        }
        if world == 1 {
            return Ok(Self::single());
        }
        let rank = number("RANK")?.ok_or_else(|| {
            DistError::Launch(format!("WORLD_SIZE={world} is set but RANK is not"))
        })?;
        if rank >= world {
            return Err(DistError::Launch(format!(
                "RANK={rank} must be below WORLD_SIZE={world}"
            )));
        }
        let local_rank = number("LOCAL_RANK")?.unwrap_or(rank);
        let master_addr = var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let master_port = match var("MASTER_PORT") {
            None => 29500,
            Some(p) => p.trim().parse().map_err(|_| {
                DistError::Launch(format!("MASTER_PORT={p:?} is not a port number"))
            })?,
        };
        Ok(Self {
            rank,
            world,
            local_rank,
            master_addr,
            master_port,
            agent_store: var("TORCHELASTIC_USE_AGENT_STORE")
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
        })
    }
}

/// This process's handle on the run's collectives. Every rank must issue the same calls in the
/// same order (each call's key is derived from a counter).
pub struct Comm {
    raw: *mut ffi::RawComm,
    rank: usize,
    world: usize,
    calls: u64,
    timeout_ms: i64,
}

// The c10d objects behind `raw` are owned by this handle alone and used from one thread at a time.
unsafe impl Send for Comm {}

impl Comm {
    /// Joins the run: rank 0 serves the store at `MASTER_ADDR:MASTER_PORT`, the others connect.
    /// Fails when the rendezvous is not complete within `timeout` (a rank never started), and
    /// every later call fails after `timeout` without its peers.
    pub fn connect(launch: &Launch, timeout: Duration) -> Result<Self, DistError> {
        let host = CString::new(launch.master_addr.as_str())
            .map_err(|_| DistError::Launch("MASTER_ADDR contains a NUL byte".into()))?;
        let mut raw = std::ptr::null_mut();
        let mut err = std::ptr::null_mut();
        let timeout_ms = i64::try_from(timeout.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        let rc = unsafe {
            ffi::divrl_comm_new(
                host.as_ptr(),
                launch.master_port,
                launch.rank as i32,
                launch.world as i32,
                i32::from(launch.rank == 0 && !launch.agent_store),
                timeout_ms,
                &mut raw,
                &mut err,
            )
        };
        let comm = Self {
            raw,
            rank: launch.rank,
            world: launch.world,
            calls: 0,
            timeout_ms,
        };
        if rc != 0 {
            return Err(comm.error(
                format!(
                    "rendezvous at {}:{}",
                    launch.master_addr, launch.master_port
                ),
                err,
            ));
        }
        Ok(comm)
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world(&self) -> usize {
        self.world
    }

    fn next_key(&mut self, what: &str) -> CString {
        self.calls += 1;
        CString::new(format!("divrl/{what}/{}", self.calls)).expect("no NUL in a key")
    }

    fn error(&self, what: String, err: *mut c_char) -> DistError {
        let message = if err.is_null() {
            "no message".to_string()
        } else {
            let m = unsafe { CStr::from_ptr(err) }
                .to_string_lossy()
                .into_owned();
            unsafe { ffi::divrl_comm_free_buffer(err.cast()) };
            m
        };
        // c10d's messages can span lines, and some carry the C++ stack after "Exception raised
        // from"; keep the message itself, on one line.
        let message = match message.find("Exception raised from") {
            Some(at) => &message[..at],
            None => &message[..],
        };
        let message = message
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        DistError::C10d {
            rank: self.rank,
            world: self.world,
            what,
            message,
        }
    }

    /// Waits until every rank has reached this barrier (or fails after the timeout).
    pub fn barrier(&mut self) -> Result<(), DistError> {
        let key = self.next_key("barrier");
        let mut err = std::ptr::null_mut();
        let rc = unsafe { ffi::divrl_comm_barrier(self.raw, key.as_ptr(), &mut err) };
        if rc != 0 {
            return Err(self.error("barrier".into(), err));
        }
        Ok(())
    }

    /// Every rank's `data`, in rank order (this rank's own included).
    pub fn all_gather(&mut self, data: &[u8]) -> Result<Vec<Vec<u8>>, DistError> {
        let key = self.next_key("all_gather");
        let mut out = std::ptr::null_mut();
        let mut out_len = 0usize;
        let mut lens = vec![0usize; self.world];
        let mut err = std::ptr::null_mut();
        let rc = unsafe {
            ffi::divrl_comm_all_gather(
                self.raw,
                key.as_ptr(),
                data.as_ptr(),
                data.len(),
                &mut out,
                &mut out_len,
                lens.as_mut_ptr(),
                &mut err,
            )
        };
        if rc != 0 {
            return Err(self.error("all-gather".into(), err));
        }
        let flat = unsafe { std::slice::from_raw_parts(out, out_len) };
        let mut parts = Vec::with_capacity(self.world);
        let mut at = 0;
        for len in lens {
            parts.push(flat[at..at + len].to_vec());
            at += len;
        }
        unsafe { ffi::divrl_comm_free_buffer(out.cast()) };
        Ok(parts)
    }

    /// Every rank's `f32` vector, in rank order; all must have the same length.
    pub fn all_gather_f32(&mut self, data: &[f32]) -> Result<Vec<Vec<f32>>, DistError> {
        let parts = self.all_gather_f32_any(data)?;
        for (r, p) in parts.iter().enumerate() {
            if p.len() != data.len() {
                return Err(DistError::Mismatch {
                    rank: self.rank,
                    world: self.world,
                    message: format!(
                        "rank {r} sent {} bytes of floats, this rank {}",
                        4 * p.len(),
                        4 * data.len()
                    ),
                });
            }
        }
        Ok(parts)
    }

    /// Every rank's `f32` vector, in rank order, of any length (e.g. a different number of rows
    /// per rank).
    pub fn all_gather_f32_any(&mut self, data: &[f32]) -> Result<Vec<Vec<f32>>, DistError> {
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        let parts = self.all_gather(&bytes)?;
        Ok(parts
            .iter()
            .map(|p| {
                p.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            })
            .collect())
    }

    /// Every rank's `f64` vector, in rank order, of any length.
    pub fn all_gather_f64_any(&mut self, data: &[f64]) -> Result<Vec<Vec<f64>>, DistError> {
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        let parts = self.all_gather(&bytes)?;
        Ok(parts
            .iter()
            .map(|p| {
                p.chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect()
            })
            .collect())
    }

    /// Replaces `data` by its sum over the ranks, added in rank order so that every rank holds
    /// the same bits.
    pub fn all_sum_f32(&mut self, data: &mut [f32]) -> Result<(), DistError> {
        let parts = self.all_gather_f32(data)?;
        for (i, v) in data.iter_mut().enumerate() {
            *v = parts.iter().fold(0.0f32, |acc, p| acc + p[i]);
        }
        Ok(())
    }
}

impl Comm {
    /// Leaves the run: every rank counts itself out, and rank 0, which serves the store, waits
    /// (at most the timeout) until all have, so that no rank loses the store in the middle of its
    /// last collective. Dropping a `Comm` instead waits only a short grace (a failed run).
    pub fn finish(mut self) -> Result<(), DistError> {
        let result = self.finish_raw(self.timeout_ms);
        unsafe { ffi::divrl_comm_free(self.raw) };
        self.raw = std::ptr::null_mut();
        result
    }

    fn finish_raw(&mut self, wait_ms: i64) -> Result<(), DistError> {
        let mut err = std::ptr::null_mut();
        if unsafe { ffi::divrl_comm_finish(self.raw, wait_ms, &mut err) } != 0 {
            return Err(self.error("finish".into(), err));
        }
        Ok(())
    }
}

/// Dropping a `Comm` without [`Comm::finish`] is how a failing rank leaves: it counts itself out,
/// and rank 0 gives the others a short grace ([`DROP_GRACE`], at most the timeout) to finish the
/// exchange they are in before it closes the store — not a whole timeout, since the reason it
/// fails may be a peer that died.
impl Drop for Comm {
    fn drop(&mut self) {
        if !self.raw.is_null() {
            let grace = i64::try_from(DROP_GRACE.as_millis()).unwrap_or(i64::MAX);
            let _ = self.finish_raw(grace.min(self.timeout_ms));
            unsafe { ffi::divrl_comm_free(self.raw) };
        }
    }
}

/// How long rank 0 waits for the others when its `Comm` is dropped without [`Comm::finish`].
pub const DROP_GRACE: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn launch(vars: &[(&str, &str)]) -> Result<Launch, DistError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Launch::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn torchrun_variables_are_read_and_checked() {
        assert_eq!(launch(&[]).unwrap(), Launch::single());
        assert_eq!(launch(&[("WORLD_SIZE", "1")]).unwrap(), Launch::single());
        let l = launch(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "2"),
            ("LOCAL_RANK", "0"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "1234"),
        ])
        .unwrap();
        assert_eq!(
            (
                l.rank,
                l.world,
                l.local_rank,
                l.master_addr.as_str(),
                l.master_port
            ),
            (2, 4, 0, "10.0.0.1", 1234)
        );
        let l = launch(&[("WORLD_SIZE", "2"), ("RANK", "1")]).unwrap();
        assert_eq!(
            (l.local_rank, l.master_port, l.agent_store),
            (1, 29500, false)
        );
        // Under torchrun's agent store rank 0 connects to the agent's store instead of serving.
        let l = launch(&[
            ("WORLD_SIZE", "2"),
            ("RANK", "0"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
        ])
        .unwrap();
        assert!(l.agent_store);
        for bad in [
            vec![("WORLD_SIZE", "2")],
            vec![("WORLD_SIZE", "2"), ("RANK", "2")],
            vec![("WORLD_SIZE", "0")],
            vec![("WORLD_SIZE", "two"), ("RANK", "0")],
            vec![("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "70000")],
        ] {
            let e = launch(&bad).unwrap_err().to_string();
            assert!(!e.is_empty() && !e.contains('\n'), "{bad:?}: {e}");
        }
    }
}

//! What `/status`, `/metrics` and `/readyz` know of a volume: its phase, and
//! what its checks, restarts and errors left behind.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::time::Instant;

use crate::spec::Volume;

/// Where a volume is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Pending,
    Mounting,
    Ready,
    Repairing,
    Failed,
    Stopping,
    Stopped,
}

/// What `/status`, `/metrics` and `/readyz` know of a volume.
#[derive(Debug, Clone)]
pub struct Status {
    pub name: String,
    pub kind: &'static str,
    pub mountpoint: PathBuf,
    pub phase: Phase,
    /// The last bounded check answered (only meaningful while `Ready`).
    pub responsive: bool,
    /// A check still waiting for the kernel, and since when.
    pub check_started: Option<Instant>,
    pub pid: Option<i32>,
    pub restarts: u64,
    pub repairs: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    /// Counts mounts; a check started on an earlier mount does not speak for this one.
    pub generation: u64,
    /// The FUSE connection serving the mount (its device number, as fusectl names it).
    pub connection: Option<u64>,
    /// Layers its teardowns unmounted at the mountpoint: more than were there when
    /// a shutdown began means someone mounted there meanwhile.
    pub unmounted: u64,
}

impl Status {
    pub fn new(volume: &Volume, mountpoint: &Path) -> Status {
        Status {
            name: volume.name.clone(),
            kind: volume.source.type_name(),
            mountpoint: mountpoint.to_path_buf(),
            phase: Phase::Pending,
            responsive: false,
            check_started: None,
            pid: None,
            restarts: 0,
            repairs: 0,
            errors: 0,
            last_error: None,
            generation: 0,
            connection: None,
            unmounted: 0,
        }
    }

    /// The state users see: `ready` only when mounted and answering.
    pub fn state(&self) -> &'static str {
        match self.phase {
            Phase::Ready if !self.responsive => "unready",
            Phase::Ready => "ready",
            Phase::Pending => "pending",
            Phase::Mounting => "mounting",
            Phase::Repairing => "repairing",
            Phase::Failed => "failed",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
        }
    }

    pub fn is_ready(&self) -> bool {
        self.phase == Phase::Ready && self.responsive
    }
}

pub type SharedStatus = Arc<Mutex<Status>>;

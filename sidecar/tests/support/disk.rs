//! Loop devices over sparse files: real block devices for `block` volumes, freed on drop.

use std::fs;
use std::path::Path;
use std::process::Command;

use super::require_tool;

/// A loop device over a sparse file; detached on drop.
pub struct Loop {
    pub device: String,
    _dir: tempfile::TempDir,
}

impl Loop {
    pub fn new(size_mib: u64) -> Loop {
        require_tool("losetup", "mount");
        let dir = tempfile::Builder::new().prefix("sidemount-disk-").tempdir().unwrap();
        let image = dir.path().join("disk.img");
        fs::File::create(&image).unwrap().set_len(size_mib << 20).unwrap();
        let out = Command::new("losetup").args(["-f", "--show"]).arg(&image).output().unwrap();
        assert!(out.status.success(), "losetup: {}", String::from_utf8_lossy(&out.stderr));
        let device = String::from_utf8(out.stdout).unwrap().trim().to_string();
        Loop { device, _dir: dir }
    }

    pub fn path(&self) -> &Path {
        Path::new(&self.device)
    }

    /// What blkid finds on it now.
    pub fn fs_type(&self) -> String {
        let out = Command::new("blkid").args(["-p", "-o", "value", "-s", "TYPE", &self.device]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

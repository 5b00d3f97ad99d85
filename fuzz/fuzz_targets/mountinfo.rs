//! `mounts::MountTable::parse` on any bytes, then every question the supervisor
//! asks of a table, for every mount point in it. Asserted: no panic, no endless
//! walk (within the time bound), a stack never holds a mount twice, and the
//! index by mount point answers as a scan of the table does.

#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use sidemount::mounts::{Mount, MountTable};

const BOUND: Duration = Duration::from_secs(2);

fuzz_target!(|data: &[u8]| {
    let started = Instant::now();
    let Ok(table) = MountTable::parse(data) else { return };
    for mount in &table.mounts {
        let path = &mount.mount_point;
        let stack = table.stack_at(path);
        assert!(stack.len() <= table.mounts.len());
        for (i, m) in stack.iter().enumerate() {
            assert!(!stack[..i].iter().any(|seen| std::ptr::eq(*seen, *m)), "a mount twice in the stack at {path:?}");
        }
        let scanned: Vec<&Mount> = table.mounts.iter().filter(|m| m.mount_point == *path).map(|m| &**m).collect();
        assert_eq!(table.at(path).collect::<Vec<_>>(), scanned, "the index disagrees at {path:?}");
        let _ = table.holder_of(path);
        let _ = table.above_base(path, Mount::is_fuse);
        let _ = table.volume_at(path, Mount::is_fuse);
        assert!(table.is_mount_point(path));
    }
    let took = started.elapsed();
    assert!(took < BOUND, "the table took {took:?} on {} bytes", data.len());
});

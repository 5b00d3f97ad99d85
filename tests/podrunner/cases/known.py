"""Cases that fail today for a reason in the product that is known and not fixed
yet. Each still asserts the safe behaviour; listed here it is expected to fail,
and a listed case that passes fails the run (remove it from the list then)."""

# Orders of pod deletion that lose acknowledged data today.
KNOWN_DATA_LOSS = {
}

# Cases waiting for a product fix being made elsewhere.
AWAITING_FIX = {
    "job_completes": "rclone --vfs-cache-mode writes: the writer's close() returns with the upload still "
                     "queued (write-back after 5 s), the sidecar is stopped a second later and unmounts at "
                     "once, rclone exits 0 and the file never reaches the bucket; the supervisor must wait "
                     "for rclone's write-back queue at shutdown",
}

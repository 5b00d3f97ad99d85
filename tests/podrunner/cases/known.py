"""Cases that fail today for a reason in the product that is known and not fixed
yet. Each still asserts the safe behaviour; listed here it is expected to fail,
and a listed case that passes fails the run (remove it from the list then)."""

# Orders of pod deletion that lose acknowledged data today.
KNOWN_DATA_LOSS = {
    "oom_then_delete_block":
        "the sidecar is SIGKILLed and the pod deleted before it comes back: its ext4 mount stays on the "
        "node's emptyDir, the kubelet's recursive delete (os.RemoveAll) empties the filesystem "
        "(README, Data safety at pod deletion)",
    "sidecar_restart_block":
        "the sidecar is SIGKILLed and restarted: the new container's bind of the emptyDir is a bind of the "
        "filesystem the dead one left mounted there, so the new supervisor's clearing and its SIGTERM "
        "unmount act on its own bind only; the node keeps the first mount, and at the next deletion, "
        "graceful or not, the kubelet's recursive delete empties the filesystem",
}

# Recoveries the design promises that do not happen in a real pod today (no
# acknowledged data is lost: the cases check that first).
KNOWN_NO_RECOVERY = {
    "sidecar_restart_fuse":
        "a restarted sidecar cannot be created: the runtime stats its volume's host path, the dead FUSE "
        "mount the killed sidecar left on the node's emptyDir answers ENOTCONN (docker: \"invalid mount "
        "config\", containerd's CRI: \"failed to stat\"), the kubelet retries forever "
        "(CreateContainerError); the app's volume stays dead and the deletion is stuck Terminating",
}

# Cases waiting for a product fix that is not in yet (none now).
AWAITING_FIX: dict = {}

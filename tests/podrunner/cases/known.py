"""Cases that fail today for a reason in the product that is known and not fixed
yet. Each still asserts the safe behaviour; listed here it is expected to fail,
and a listed case that passes fails the run (remove it from the list then)."""

# Orders of pod deletion that lose acknowledged data today.
KNOWN_DATA_LOSS = {
    "oom_then_delete_block":
        "the sidecar is SIGKILLed and the pod deleted before it comes back: nothing is left to unmount its "
        "ext4, which stays mounted on the node at the root emptyDir's directory, and the kubelet's recursive "
        "delete (os.RemoveAll) of the emptyDir empties the filesystem; only a root outside the pod's "
        "directory (a hostPath) would keep it out of the delete's reach (README, Data safety at pod deletion)",
}

# Recoveries the design promises that do not happen in a real pod today (none now).
KNOWN_NO_RECOVERY: dict = {}

# Cases waiting for a product fix that is not in yet (none now).
AWAITING_FIX: dict = {}

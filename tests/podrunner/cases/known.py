"""Cases that fail today for a reason in the product that is known and not fixed
yet. Each still asserts the safe behaviour; listed here it is expected to fail,
and a listed case that passes fails the run (remove it from the list then)."""

# Orders of pod deletion that lose acknowledged data today (none now).
KNOWN_DATA_LOSS: dict = {}

# Recoveries the design promises that do not happen in a real pod today (none now).
KNOWN_NO_RECOVERY: dict = {}

# Cases waiting for a product fix that is not in yet (none now).
AWAITING_FIX: dict = {}

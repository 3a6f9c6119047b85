"""Writing files the way igdm-kit does (public): atomically (a temporary beside the target, then a rename), so a
kill never leaves half a file, and with a one-line ``StorageError`` naming the file when the system refuses.
"""

from igdm_kit._storage.io import atomic_write, atomic_write_json, atomic_write_jsonl, atomic_write_text

__all__ = ["atomic_write", "atomic_write_json", "atomic_write_jsonl", "atomic_write_text"]

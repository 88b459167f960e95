"""A node's local store of large objects: shared-memory files, spilled to disk.

``shm_format`` is the file format of one object; ``node_store`` keeps the
files of one node, within a memory limit.
"""
from .node_store import (NodeStore, default_memory_limit, locate_object, open_object, parse_size,
                         validate_object_id)
from .shm_format import object_size, read_bytes_frames, read_object, write_object

__all__ = ["NodeStore", "default_memory_limit", "parse_size", "validate_object_id", "locate_object", "open_object",
           "object_size", "write_object", "read_object", "read_bytes_frames"]

//! Checkpoint I/O (filled in by the checkpoint work).

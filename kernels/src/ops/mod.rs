//! burn custom ops (filled in by the ops work).

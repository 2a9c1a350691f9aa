//! PEFT adapter directories.

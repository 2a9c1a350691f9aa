//! gpt-oss in burn (filled in by the model work).

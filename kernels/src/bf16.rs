//! BF16 codec (filled in by the codec work).

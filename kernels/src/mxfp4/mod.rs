//! MXFP4 codec (filled in by the codec work).

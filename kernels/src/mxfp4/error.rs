//! The codec's error type.

/// What can go wrong in the MXFP4 / BF16 codecs. Both variants carry enough context for the
/// caller to name the tensor, row and column.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodecError {
    /// A NaN or infinity in the input; `index` is the flat element index of the FIRST one.
    #[error("non-finite value {value} at flat index {index}")]
    NonFinite {
        /// flat element index into the input slice, so callers can name row/col/tensor
        index: usize,
        /// the offending value
        value: f32,
    },
    /// A slice whose length does not fit (e.g. not a multiple of 32, blocks len != x.len()/2).
    #[error("bad length for {what}: expected {expected}, got {got}")]
    Length {
        /// which slice (and rule) is wrong
        what: &'static str,
        /// the length that would fit
        expected: usize,
        /// the length given
        got: usize,
    },
}

/// Checks the slice lengths of a quantize call (`x`, packed `blocks`, `scales`).
pub(crate) fn check_quantize_lengths(
    n: usize,
    blocks: usize,
    scales: usize,
) -> Result<(), CodecError> {
    if !n.is_multiple_of(super::BLOCK) {
        return Err(CodecError::Length {
            what: "input elements (must be a multiple of 32)",
            expected: n.next_multiple_of(super::BLOCK),
            got: n,
        });
    }
    check_packed_lengths(n, blocks, scales)
}

/// Checks `blocks`/`scales` lengths against `n` elements (`n` already a multiple of 32).
pub(crate) fn check_packed_lengths(
    n: usize,
    blocks: usize,
    scales: usize,
) -> Result<(), CodecError> {
    if !n.is_multiple_of(super::BLOCK) {
        return Err(CodecError::Length {
            what: "output elements (must be a multiple of 32)",
            expected: n.next_multiple_of(super::BLOCK),
            got: n,
        });
    }
    let groups = n / super::BLOCK;
    CodecError::expect_len(
        "packed blocks (bytes, elements / 2)",
        groups * super::BLOCK_BYTES,
        blocks,
    )?;
    CodecError::expect_len("scales (bytes, elements / 32)", groups, scales)
}

impl CodecError {
    /// `Ok` when `got == expected`, else a [`CodecError::Length`] naming `what`.
    pub fn expect_len(what: &'static str, expected: usize, got: usize) -> Result<(), CodecError> {
        if expected == got {
            Ok(())
        } else {
            Err(CodecError::Length {
                what,
                expected,
                got,
            })
        }
    }
}

/// Checks that an input and an output slice have the same length, a multiple of 32.
pub(crate) fn check_same_lengths(n: usize, out: usize) -> Result<(), CodecError> {
    if !n.is_multiple_of(super::BLOCK) {
        return Err(CodecError::Length {
            what: "input elements (must be a multiple of 32)",
            expected: n.next_multiple_of(super::BLOCK),
            got: n,
        });
    }
    CodecError::expect_len("output elements (must equal input elements)", n, out)
}

/// The first NaN/Inf in `x` as a [`CodecError::NonFinite`], if any.
pub(crate) fn first_non_finite(x: &[f32], offset: usize) -> Option<CodecError> {
    x.iter()
        .position(|v| !v.is_finite())
        .map(|i| CodecError::NonFinite {
            index: offset + i,
            value: x[i],
        })
}

//! Typed errors of the kernel layer: every error names the operand and the sizes at fault.

/// Errors returned by the kernels (shape mismatches only; the kernels themselves cannot fail).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KernelError {
    /// `{what}` has {got} elements, expected {expected}
    #[error("{what} has {got} elements, expected {expected}")]
    Len {
        /// Which operand is wrong, e.g. "weight" or "x".
        what: &'static str,
        /// Elements passed.
        got: usize,
        /// Elements required by the other arguments.
        expected: usize,
    },
    /// a dimension is zero or too large
    #[error("{what} must be in 1..={max}, got {got}")]
    Dim {
        /// Which dimension.
        what: &'static str,
        /// Value passed.
        got: usize,
        /// Largest supported value.
        max: usize,
    },
    /// a weight or bias value is not finite
    #[error("{what} contains a non-finite value at index {index}")]
    NonFinite {
        /// Which operand.
        what: &'static str,
        /// Flat index of the first bad value.
        index: usize,
    },
    /// rows `ld` apart overlap because `ld` is less than the row width
    #[error("{what}: rows {ld} elements apart overlap rows {width} wide")]
    Stride {
        /// Which operand.
        what: &'static str,
        /// Distance between row starts, in elements.
        ld: usize,
        /// Elements per row.
        width: usize,
    },
    /// the requested kernel cannot run on this CPU
    #[error("kernel {0} is not supported by this CPU")]
    Unsupported(&'static str),
}

pub(crate) fn check_len(
    what: &'static str,
    got: usize,
    expected: usize,
) -> Result<(), KernelError> {
    if got == expected {
        Ok(())
    } else {
        Err(KernelError::Len {
            what,
            got,
            expected,
        })
    }
}

pub(crate) fn check_dim(what: &'static str, got: usize, max: usize) -> Result<(), KernelError> {
    if got == 0 || got > max {
        Err(KernelError::Dim { what, got, max })
    } else {
        Ok(())
    }
}

pub(crate) fn check_finite(what: &'static str, v: &[f32]) -> Result<(), KernelError> {
    match v.iter().position(|x| !x.is_finite()) {
        Some(index) => Err(KernelError::NonFinite { what, index }),
        None => Ok(()),
    }
}

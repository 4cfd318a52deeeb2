//! RFC 8785 (JSON Canonicalization Scheme) with the I-JSON checks of FORMATS.md §1.
//!
//! CONTRACT (used by `event` and `verify`): `canonicalize` turns one JSON text into its canonical
//! bytes, or says what is wrong and where.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonError {
    /// Not JSON, not UTF-8, a duplicate member name, a lone surrogate escape, nesting too deep.
    #[error("{0}")]
    InvalidJson(String),
    /// A number JSON allows but a double cannot hold exactly; `path` is like `requestParameters.size`.
    #[error("{path}: {message}")]
    InvalidNumber { path: String, message: String },
}

/// Canonical bytes of one JSON text (any value).
pub fn canonicalize(input: &[u8]) -> Result<Vec<u8>, CanonError> {
    let _ = input;
    Err(CanonError::InvalidJson("not implemented yet".into()))
}

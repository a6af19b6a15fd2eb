//! Validation of objects before they are stored: names, required fields,
//! ranges, immutable fields, unknown fields.

/// One invalid field, reported in a 422 Status's `details.causes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Upstream's reason, e.g. `FieldValueRequired`, `FieldValueInvalid`.
    pub reason: &'static str,
    /// Path such as `spec.containers[0].image` or `metadata.name`.
    pub field: String,
    /// Human message, e.g. `Required value`.
    pub message: String,
}

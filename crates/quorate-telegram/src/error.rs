//! The crate's one error type.

use quorate_coord_api::CoordError;

/// What went wrong in the Telegram adapter.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TelegramError {
    /// The settings are unusable (a bad API URL, an unknown role). Nothing started.
    #[error("telegram: {0}")]
    Config(String),
    /// A coordination-store call failed; retried by the caller. The write may or may not have
    /// happened when the store timed out.
    #[error("telegram: coordination store while {what}: {reason}")]
    Store {
        /// What was being done.
        what: String,
        /// The store's error.
        reason: String,
    },
    /// A write under this fencing token was refused: a successor with a higher token took the
    /// ingress over. Nothing changed; this term must stop.
    #[error(
        "telegram: the ingress was taken over by a higher fencing token than {token}; this term stops"
    )]
    Fenced {
        /// The refused token.
        token: u64,
    },
}

impl From<CoordError> for TelegramError {
    fn from(e: CoordError) -> Self {
        TelegramError::Store {
            what: "reading or writing the ingress records".into(),
            reason: e.to_string(),
        }
    }
}

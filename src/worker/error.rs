//! Errors with a class, decided where the shell meets the outside world:
//!
//! - **bad input** ([`Rejection`]): the message is dead-lettered with its reason, counted, and
//!   processing goes on;
//! - **transient** ([`Error::Transient`]): a broker or registry that does not answer. The open
//!   batch is rolled back (nothing of it is committed) and processing retries with backoff;
//!   `/readyz` answers 503 with the reason meanwhile;
//! - **fatal** ([`Error::Fatal`]): going on could lose or corrupt state (the disk, a broken
//!   invariant, a configuration the broker refuses). The worker stops cleanly and commits nothing
//!   further; a restart resumes after the last commit.

use crate::store::StoreError;

/// Why a message is dead-lettered: a low-cardinality code (the metric label) and a detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: &'static str,
    pub detail: String,
}

impl Rejection {
    pub fn new(code: &'static str, detail: impl Into<String>) -> Rejection {
        Rejection {
            code,
            detail: detail.into(),
        }
    }
}

/// A failure of the shell: transient (retry) or fatal (stop). Bad input is not one: it is a
/// [`Rejection`], answered with a dead letter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A dependency is unavailable for now; `what` names it for `/readyz` and the logs.
    #[error("{what}: {detail}")]
    Transient { what: &'static str, detail: String },
    #[error(transparent)]
    Fatal(#[from] anyhow::Error),
}

impl Error {
    pub fn transient(what: &'static str, detail: impl std::fmt::Display) -> Error {
        Error::Transient {
            what,
            detail: detail.to_string(),
        }
    }

    pub fn fatal(message: impl std::fmt::Display) -> Error {
        Error::Fatal(anyhow::anyhow!("{message}"))
    }
}

impl From<StoreError> for Error {
    /// RocksDB failing to read or write is fatal: going on could overwrite a shopper's history.
    fn from(e: StoreError) -> Error {
        Error::Fatal(anyhow::Error::new(e).context("state store"))
    }
}

/// What one message (or one step of the protocol) came to.
pub type Outcome = Result<(), Step>;

/// Processing of one message stopped early: it is bad input, or the shell failed.
#[derive(Debug)]
pub enum Step {
    Rejected(Rejection),
    Failed(Error),
}

impl From<Rejection> for Step {
    fn from(r: Rejection) -> Step {
        Step::Rejected(r)
    }
}

impl<E: Into<Error>> From<E> for Step {
    fn from(e: E) -> Step {
        Step::Failed(e.into())
    }
}

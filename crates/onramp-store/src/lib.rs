//! Onramp's storage: implementations of [`onramp_core::ports::Store`] and the
//! sealing of secrets at rest.
//!
//! - [`seal`]: AES-256-GCM under a master key ring; the key ID is stored
//!   beside each ciphertext so keys can rotate; [`keyring`] keeps the keys
//!   on disk, and [`reseal`] moves every sealed value to the active key.
//! - [`migrations`]: numbered schema steps for every SQLite file Onramp keeps.
//! - [`sqlite`]: the embedded default, one SQLite file in WAL mode, one writer
//!   thread that commits in groups and a few reader threads.
//! - [`postgres`]: several nodes on one PostgreSQL database (a pool per
//!   node, conditional writes that lock the row they check).
//!
//! Symmetric keys, policy keys and hub connection strings never reach a
//! database file in plaintext: every backend seals them with [`seal::Sealer`].
//! Every file and folder they create is private to the owner (`onramp_files`).
#![forbid(unsafe_code)]

pub mod backup;
mod diagnostic_rows;
pub mod keyring;
pub mod migrations;
pub mod postgres;
mod record;
pub mod reseal;
pub mod seal;
pub mod sqlite;

pub use postgres::PgStore;
pub use seal::Sealer;
pub use sqlite::SqliteStore;

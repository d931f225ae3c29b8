//! MemoryStore is the store engine tests run on: it must be as faithful as
//! a real backend.

use std::sync::Arc;

use onramp_testkit::MemoryStore;

onramp_testkit::store_conformance!(async || Arc::new(MemoryStore::new()));

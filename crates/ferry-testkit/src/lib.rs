//! Test support for ferry's crates: throwaway PostgreSQL databases ([`pg`]), and later
//! workload generators and fault injection.
//!
//! Tests use real components only: a real PostgreSQL server started from the installed
//! binaries (or the one `FERRY_TEST_PG_URL` names), real SQLite files.

pub mod pg;

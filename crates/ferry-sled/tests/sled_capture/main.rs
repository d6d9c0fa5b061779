//! ferry-sled's integration tests: real sled databases, the real durable log (ferry-log),
//! the log folded with ferry-core's strict fold and compared with sled's trees.

mod crash_loop;
mod differential;
mod limits;
mod memory;
mod postgres;
mod recovery;
mod support;

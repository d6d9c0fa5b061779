//! ferry-log's integration tests: one test binary, one module per concern.

mod api;
mod common;
mod damage;
mod golden;
mod group_commit;
mod pipeline;
mod sigkill;
mod sim_crash;

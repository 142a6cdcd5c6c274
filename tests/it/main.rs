//! The integration tests: one binary, one module per area. They mount
//! stratafs for real (FUSE) on temporary layer stacks and, where the kernel
//! overlay defines the behaviour, compare with it on the same stacks.
//!
//! Run one area with `cargo test --test it read_path::`.

mod common;

mod check;
mod cli;
mod crash;
mod differential;
mod enospc;
mod harness;
mod hostile;
mod kernel_parity;
mod library;
mod lifecycle;
mod metacopy;
mod no_open;
mod ownership;
mod passthrough;
mod privileges;
mod read_path;
mod redirect;
mod store;
mod stress;
mod write_path;

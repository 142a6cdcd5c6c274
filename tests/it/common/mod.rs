//! Shared harness of the integration tests.
//!
//! * [`env`]: rootless or not, the binary under test, knobs, [`skip`], a
//!   seeded PRNG.
//! * [`errno`], [`sys`], [`dirs`]: raw syscalls as `Result<T, errno>`,
//!   directory readers, assertions on errnos.
//! * [`stacks`]: layer stacks (`stratafs::api::TempStack`) with mount and
//!   path helpers, and the stratafs / kernel overlay [`Pair`].
//! * [`mounts`]: guards that always unmount on drop, also when a test
//!   panics: the stratafs daemon, the kernel overlay (the oracle), tmpfs.
//! * [`snapshot`]: merged trees and upper layers captured, normalised to
//!   overlay semantics, and compared.
//! * [`process`]: child processes with timeouts.
//!
//! Environment knobs (all optional):
//! * `STRATAFS_TEST_BIN` – run the suites against another binary with the
//!   same command line (e.g. a release build).
//! * `STRATAFS_TEST_FSTYPE` – the fstype stratafs mounts show in mountinfo
//!   (default `fuse.stratafs`, which the CLI tests assert; without it the
//!   mount helpers accept any FUSE mount).
//! * `STRATAFS_SKIP_LOG` – file that records skipped tests ([`skip`]).

pub mod dirs;
pub mod env;
pub mod errno;
pub mod mounts;
pub mod process;
pub mod snapshot;
pub mod stacks;
pub mod sys;

pub use dirs::*;
pub use env::*;
pub use errno::*;
pub use mounts::*;
pub use process::*;
pub use snapshot::*;
pub use stacks::*;
pub use stratafs::api::{Layer, Markers, OpaqueForm, TempStackBuilder, WhiteoutForm};

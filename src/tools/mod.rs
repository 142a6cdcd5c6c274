//! The offline tools: `check` (validate and repair an upper and work
//! directory) and `inspect` (what each layer of a stack holds and hides).
//! They read layers with the mount's own rules (`format`, `core::resolve`).
pub(crate) mod check;
pub(crate) mod inspect;

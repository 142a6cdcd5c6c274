//! Setting a mount up: the command line (`options`), opening and checking
//! the layer directories once (`stack`), and finding a layer's chain in a
//! Docker or containers-storage store (`store`).
pub(crate) mod options;
pub(crate) mod stack;
pub(crate) mod store;

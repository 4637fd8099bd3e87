//! Sockeye browser client (work in progress).

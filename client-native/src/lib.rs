//! Sockeye native client (work in progress).

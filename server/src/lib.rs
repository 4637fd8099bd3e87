//! Sockeye reference server (work in progress).

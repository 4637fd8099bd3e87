//! Cross-crate tests live in `tests/`; this library holds what they share: the chaos proxy ([`chaos`]).

pub mod chaos;

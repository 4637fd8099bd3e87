//! Cross-crate tests live in `tests/`; this library holds what they share: the harnesses the fuzz targets in
//! `fuzz/` run ([`fuzz`]) and the chaos proxy ([`chaos`]).

pub mod chaos;
pub mod fuzz;

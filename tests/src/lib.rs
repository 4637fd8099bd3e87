//! Cross-crate tests live in `tests/`; this library holds what they share: the harnesses the fuzz targets in
//! `fuzz/` run ([`fuzz`]), the chaos proxy ([`chaos`]), and the client–server simulation [`pair`].

pub mod chaos;
pub mod fuzz;
pub mod pair;

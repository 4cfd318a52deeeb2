//! verify: see lib.rs.

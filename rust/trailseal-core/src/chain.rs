//! chain: see lib.rs.

//! dedup: see lib.rs.

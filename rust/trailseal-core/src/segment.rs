//! segment: see lib.rs.

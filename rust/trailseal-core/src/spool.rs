//! spool: see lib.rs.

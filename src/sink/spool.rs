//! Placeholder: the spool sink is being written.

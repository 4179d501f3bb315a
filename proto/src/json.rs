//! The protojson mapping of PROTOCOLS.md §1.5.

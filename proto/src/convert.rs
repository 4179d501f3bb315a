//! v2→v1 and v1→v2 conversions (PROTOCOLS.md §3.4, §3.5).

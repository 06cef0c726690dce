//! The handlespace: pools, pool elements and selection policies (RFC 5356).

//! The TCP mapping (draft-ietf-rserpool-tcpmapping, digest §10): chunk framing.

//! msb

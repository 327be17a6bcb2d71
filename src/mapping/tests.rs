//! Tests for the mapping module.
